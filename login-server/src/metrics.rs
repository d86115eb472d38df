//! The login server's Prometheus page (`--metrics`, served by
//! [`natter_net::metrics`]): connections open, and requests answered by
//! type and outcome (logins and their failures by reason among them). Names
//! are `natter_login_*`.

use natter_net::metrics::Exposition;

/// Everything the page shows, read at one scrape.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    pub connections: u64,
    pub max_connections: u64,
    pub outcomes: Vec<((&'static str, &'static str), u64)>,
}

pub(crate) fn render(f: &Figures) -> String {
    let mut page = Exposition::new();
    page.gauge(
        "natter_login_connections",
        "Connections open now (QUIC and TLS over TCP).",
        f.connections,
    );
    page.gauge(
        "natter_login_max_connections",
        "The connection limit.",
        f.max_connections,
    );
    let samples: Vec<([(&str, &str); 2], u64)> = f
        .outcomes
        .iter()
        .map(|&((request, outcome), n)| ([("request", request), ("outcome", outcome)], n))
        .collect();
    let samples: Vec<(&[(&str, &str)], u64)> = samples
        .iter()
        .map(|(labels, n)| (&labels[..], *n))
        .collect();
    page.counters(
        "natter_login_requests",
        "Requests answered, by request type and outcome (ok or the error code).",
        &samples,
    );
    page.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_labelled_samples_of_one_counter() {
        let page = render(&Figures {
            connections: 2,
            max_connections: 4096,
            outcomes: vec![(("login", "ok"), 5), (("login", "WRONG_PASSWORD"), 3)],
        });
        assert!(page.contains("natter_login_connections 2\n"), "{page}");
        assert!(
            page.contains(
                "natter_login_requests_total{request=\"login\",outcome=\"WRONG_PASSWORD\"} 3\n"
            ),
            "{page}"
        );
        assert_eq!(
            page.matches("# TYPE natter_login_requests_total counter")
                .count(),
            1
        );
    }
}
