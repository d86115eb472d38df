//! The userspace impairment link on real packets (needs root): UDP datagrams
//! from a host behind a port-restricted NAT router to a server, through the
//! router's wire, measured one way at the receiver. The lab (and the wire's
//! namespace and process) is torn down by `Lab`'s `Drop`, also when an
//! assertion fails.
//!
//! Tolerances, and why they are safe under load:
//! * delay: the wire never releases a packet before its time, so the
//!   minimum is at least `delay - jitter`; the mean is within 1 ms below
//!   (sampling error of 4,000 uniform delays is about 0.2 ms for wifi) and
//!   10 ms above (scheduling lag on a busy 2-core machine only adds); the
//!   spread (standard deviation) is 0.8 to 1.5 times the uniform's
//!   `jitter / sqrt(3)` (sampling error about 2 %; lag widens it).
//! * loss: counted, not timed: every datagram has a sequence number. The
//!   count is within 4.5 standard deviations of the loss model's
//!   ([`impair::loss_count_sd`], Gilbert-Elliott bursts) plus 3 datagrams
//!   of slack for the few non-test frames (ARP) that draw from the same
//!   loss process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use natter_interop_tests::impair;
use natter_interop_tests::lab::{Client, Lab, LabConfig};
use natter_interop_tests::nat::{Impairment, NatType};
use natter_interop_tests::wire::SinkReport;

const EXE: &str = env!("CARGO_BIN_EXE_natter-interop-tests");
const SINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 60);
const N: u32 = 4000;

struct Measured {
    lost: u64,
    mean_ms: f64,
    sd_ms: f64,
    min_ms: f64,
    p95_ms: f64,
    reordered: u64,
    /// mean length of runs of consecutive lost sequence numbers
    mean_burst: f64,
}

fn measure(lab: &mut Lab, c: &Client, sink_ns: &str, tag: &str, port: u16) -> Measured {
    let bind = format!("{SINK}:{port}");
    let sink = lab
        .spawn(
            sink_ns,
            &format!("sink-{tag}"),
            EXE,
            &[
                "probe-udp-sink",
                "--bind",
                &bind,
                "--count",
                &N.to_string(),
                "--idle-ms",
                "1500",
                "--max-ms",
                "60000",
            ],
            &[],
        )
        .unwrap();
    lab.wait_for_log(sink, "sink up", Duration::from_secs(10))
        .unwrap();
    lab.exec(
        &c.host_ns,
        EXE,
        &[
            "probe-udp-send",
            "--to",
            &bind,
            "--count",
            &N.to_string(),
            "--interval-us",
            "1000",
        ],
        &[],
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(lab.wait(sink, Duration::from_secs(30)).unwrap().success());
    let log = lab.log_of(sink);
    let json = log.lines().find(|l| l.starts_with('{')).expect(&log);
    let rep: SinkReport = serde_json::from_str(json).unwrap();
    assert_eq!(rep.malformed, 0);
    let seqs: Vec<u32> = rep.received.iter().map(|r| r.0).collect();
    let distinct: HashSet<u32> = seqs.iter().copied().collect();
    assert_eq!(distinct.len(), seqs.len(), "duplicates");
    assert!(seqs.iter().all(|&s| s < N));
    let lost = u64::from(N) - seqs.len() as u64;
    let mut d: Vec<f64> = rep.received.iter().map(|r| r.1 as f64 / 1000.0).collect();
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
    d.sort_by(f64::total_cmp);
    let reordered = seqs
        .iter()
        .scan(0u32, |max, &s| {
            let r = s < *max;
            *max = (*max).max(s);
            Some(r)
        })
        .filter(|&r| r)
        .count() as u64;
    let (mut runs, mut prev_lost) = (0u64, false);
    for s in 0..N {
        let gone = !distinct.contains(&s);
        runs += u64::from(gone && !prev_lost);
        prev_lost = gone;
    }
    let m = Measured {
        lost,
        mean_ms: mean,
        sd_ms: sd,
        min_ms: d[0],
        p95_ms: d[d.len() * 95 / 100],
        reordered,
        mean_burst: if runs == 0 {
            0.0
        } else {
            lost as f64 / runs as f64
        },
    };
    eprintln!(
        "{tag}: {N} sent, lost {} ({:.2} %, mean burst {:.2}), one-way delay mean {:.1} ms sd {:.1} ms min {:.1} p95 {:.1}, reordered {}",
        m.lost,
        100.0 * m.lost as f64 / f64::from(N),
        m.mean_burst,
        m.mean_ms,
        m.sd_ms,
        m.min_ms,
        m.p95_ms,
        m.reordered
    );
    m
}

fn check_profile(m: &Measured, imp: &Impairment) {
    let p = imp.link_params();
    let (lo, _) = p.delay_range_us();
    let delay = p.delay_us as f64 / 1000.0;
    let sd_model = p.jitter_us as f64 / 1000.0 / 3f64.sqrt();
    assert!(m.min_ms >= lo as f64 / 1000.0 - 0.5, "min {}", m.min_ms);
    assert!(
        (delay - 1.0..=delay + 10.0).contains(&m.mean_ms),
        "mean {} vs {delay}",
        m.mean_ms
    );
    assert!(
        (0.8 * sd_model..=1.5 * sd_model).contains(&m.sd_ms),
        "sd {} vs {sd_model}",
        m.sd_ms
    );
    let expect = f64::from(N) * p.loss;
    let tol = 4.5 * impair::loss_count_sd(u64::from(N), p.loss, p.burst) + 3.0;
    assert!(
        (m.lost as f64 - expect).abs() <= tol,
        "lost {} vs {expect} +/- {tol}",
        m.lost
    );
    assert!(
        m.lost >= 1,
        "a {} % loss process lost nothing",
        imp.loss_pct
    );
    // 1 ms spacing, jitter of tens of ms: many datagrams overtake others
    assert!(m.reordered > u64::from(N) / 10, "reordered {}", m.reordered);
}

#[test]
fn wifi_and_bad_profiles_delay_spread_and_lose_as_stated() {
    let mut cfg = LabConfig::new(EXE);
    cfg.reflectors = false;
    let mut lab = Lab::new(cfg).expect("build lab");
    let sink_ns = lab.add_server("sink", &[SINK]).unwrap();
    let c = lab.add_client(1, NatType::PortRestricted).unwrap();

    let wifi = Impairment::profile("wifi").unwrap();
    lab.set_impairment(&c, &wifi).unwrap();
    // the router is untouched: same interface, address and NAT table
    let addr = lab
        .exec(
            &c.router_ns,
            "ip",
            &["-4", "addr", "show", "wan0"],
            &[],
            Duration::from_secs(5),
        )
        .unwrap()
        .stdout;
    assert!(addr.contains("203.0.113.1/24"), "{addr}");
    let m = measure(&mut lab, &c, &sink_ns, "wifi", 9001);
    check_profile(&m, &wifi);

    let bad = Impairment::profile("bad").unwrap();
    lab.set_impairment(&c, &bad).unwrap();
    let m = measure(&mut lab, &c, &sink_ns, "bad", 9002);
    check_profile(&m, &bad);
    // bursts of 3 on average (about 67 bursts here: the mean's standard
    // error is about 0.3): clearly not independent losses (mean 1.05)
    assert!(m.mean_burst >= 1.5, "mean burst {}", m.mean_burst);

    // clean again: the wire passes everything through
    lab.set_impairment(&c, &Impairment::CLEAN).unwrap();
    let m = measure(&mut lab, &c, &sink_ns, "clean", 9003);
    assert_eq!(m.lost, 0);
    assert!(m.min_ms >= 0.0);
    let wire_ns = format!("{}w", c.router_ns);
    assert!(lab.namespaces().contains(&wire_ns));
    lab.remove_client(&c).unwrap();
    assert!(!lab.namespaces().contains(&wire_ns));
    let left = natter_interop_tests::lab::list_namespaces().unwrap();
    assert!(!left.contains(&wire_ns), "{left:?}");
}
