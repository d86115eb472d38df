//! `natter netcheck`: what kind of NAT is this host behind?
//!
//! The method of RFC 5780 with what a reflector offers (supernodes have one
//! IP and two ports; any standard STUN server also works):
//!
//! * **mapping**: one socket asks every reflector (and the first one's other
//!   port) for its public address. The same address everywhere is
//!   endpoint-independent; different per server IP but not per port is
//!   address-dependent; different per port is address-and-port-dependent.
//! * **filtering**: a fresh socket asks the first reflector to answer from
//!   its other port. An answer means the NAT lets in packets from a port it
//!   never sent to (not port-dependent); telling endpoint-independent from
//!   address-dependent would need a server with a second IP.
//! * **port preservation**, and whether a symmetric NAT allocates ports
//!   sequentially (then the next ports can be predicted).

use std::net::SocketAddr;
use std::time::Duration;

use natter_proto::stun;
use rand::RngCore;
use tokio::net::UdpSocket;

const WAIT: Duration = Duration::from_millis(400);
const TRIES: usize = 3;

/// What netcheck found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Whether any reflector answered over UDP.
    pub udp: bool,
    /// The local address of the probing socket.
    pub local: Option<SocketAddr>,
    /// Public addresses seen by each reflector (reflector, mapped).
    pub mapped: Vec<(SocketAddr, SocketAddr)>,
    /// `endpoint-independent`, `address-dependent`, `address-and-port-dependent`, or `unknown`.
    pub mapping: String,
    /// `not-port-dependent`, `address-and-port-dependent`, or `unknown`.
    pub filtering: String,
    pub port_preserved: Option<bool>,
    /// Port deltas of an endpoint-dependent mapping, when small and regular.
    pub sequential_allocation: Option<bool>,
    /// Whether the public address is the local one (no NAT).
    pub behind_nat: Option<bool>,
}

/// What a binding asks the server for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// The mapped address only: a small unpadded request.
    Mapped,
    /// The mapped address and the RFC 5780 attributes (OTHER-ADDRESS,
    /// RESPONSE-ORIGIN): a padded request, so a reflector that answers
    /// within 1.6 times the request has room for them.
    Rfc5780,
    /// Like `Rfc5780`, answered from the server's other port.
    ChangePort,
}

/// One STUN binding from `socket` to `server`, waiting `wait` for each of
/// three tries. Returns the response and its source.
///
/// `Ask::Rfc5780` and `Ask::ChangePort` pad the request to
/// `stun::PADDED_REQUEST_LEN` with PADDING (RFC 5780). PADDING is
/// comprehension-required: a server that does not know it answers 420
/// (Unknown Attribute), and the remaining tries go without it.
pub async fn binding(
    socket: &UdpSocket,
    server: SocketAddr,
    ask: Ask,
    wait: Duration,
) -> Option<(stun::Message, SocketAddr)> {
    let mut tid = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut tid);
    let mut request = stun::Message::request(tid);
    request.change_port = ask == Ask::ChangePort;
    if ask != Ask::Mapped {
        request.pad_to(stun::PADDED_REQUEST_LEN);
    }
    let mut bytes = request.encode();
    let mut buf = [0u8; 512];
    for _ in 0..TRIES {
        socket.send_to(&bytes, server).await.ok()?;
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok((n, from))) =
            tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
        {
            let Ok(msg) = stun::Message::decode(&buf[..n]) else {
                continue;
            };
            if msg.transaction_id != tid {
                continue;
            }
            if msg.kind == stun::BINDING_SUCCESS {
                return Some((msg, from));
            }
            if msg.kind == stun::BINDING_ERROR
                && msg.error_code == Some(stun::UNKNOWN_ATTRIBUTE)
                && request.padding > 0
            {
                request.padding = 0;
                bytes = request.encode();
                break;
            }
        }
    }
    None
}

/// Probes `reflectors` from the local address `bind` and classifies the NAT.
pub async fn run(bind: SocketAddr, reflectors: &[SocketAddr]) -> std::io::Result<Report> {
    let mut report = Report {
        udp: false,
        local: None,
        mapped: Vec::new(),
        mapping: "unknown".into(),
        filtering: "unknown".into(),
        port_preserved: None,
        sequential_allocation: None,
        behind_nat: None,
    };
    let Some(&first) = reflectors.first() else {
        return Ok(report);
    };

    // Filtering first, on a fresh socket, before anything opens the NAT
    // towards the reflector's other port.
    let fresh = UdpSocket::bind(bind).await?;
    if let Some((_, from)) = binding(&fresh, first, Ask::ChangePort, WAIT).await {
        report.udp = true;
        report.filtering = if from == first {
            // The server could not change port: no conclusion.
            "unknown".into()
        } else {
            "not-port-dependent".into()
        };
    } else if binding(&fresh, first, Ask::Mapped, WAIT).await.is_some() {
        report.udp = true;
        report.filtering = "address-and-port-dependent".into();
    }

    // Mapping: one socket, every reflector, and the first one's other port.
    let socket = UdpSocket::bind(bind).await?;
    let local = socket.local_addr()?;
    report.local = Some(local);
    let mut other_port = None;
    for &server in reflectors {
        // Only the first reflector's OTHER-ADDRESS is used.
        let ask = if server == first {
            Ask::Rfc5780
        } else {
            Ask::Mapped
        };
        if let Some((msg, _)) = binding(&socket, server, ask, WAIT).await
            && let Some(mapped) = msg.mapped
        {
            report.udp = true;
            report.mapped.push((server, mapped));
            if server == first {
                other_port = msg
                    .other_address
                    .filter(|o| o.ip() == first.ip() && *o != first);
            }
        }
    }
    let same_ip_other_port = match other_port {
        Some(alt) => binding(&socket, alt, Ask::Mapped, WAIT)
            .await
            .and_then(|(m, _)| m.mapped),
        None => None,
    };
    let Some(&(_, first_mapped)) = report.mapped.first() else {
        return Ok(report);
    };
    report.port_preserved = Some(first_mapped.port() == local.port());
    report.behind_nat = Some(first_mapped != local);
    let all_same = report.mapped.iter().all(|(_, m)| *m == first_mapped);
    let port_dependent = same_ip_other_port.is_some_and(|m| m != first_mapped);
    report.mapping = if port_dependent {
        "address-and-port-dependent".into()
    } else if !all_same {
        "address-dependent".into()
    } else if report.mapped.len() >= 2 || same_ip_other_port.is_some() {
        "endpoint-independent".into()
    } else {
        "unknown".into()
    };
    if report.mapping != "endpoint-independent" {
        let mut ports: Vec<i32> = report
            .mapped
            .iter()
            .map(|(_, m)| i32::from(m.port()))
            .collect();
        if let Some(m) = same_ip_other_port {
            ports.push(i32::from(m.port()));
        }
        if ports.len() >= 2 {
            report.sequential_allocation =
                Some(ports.windows(2).all(|w| (1..=4).contains(&(w[1] - w[0]))));
        }
    }
    Ok(report)
}

impl Report {
    /// The NAT class a conference's capability record carries
    /// (`natter_proto::conference`, the host election). Conservative where
    /// netcheck cannot tell: endpoint-independent filtering needs a second
    /// server IP, so an endpoint-independent mapping that lets the other
    /// port in counts as address-restricted, and unknown filtering as
    /// port-restricted; any endpoint-dependent mapping is symmetric.
    pub fn nat_class(&self) -> natter_proto::conference::NatClass {
        use natter_proto::conference::NatClass;
        if !self.udp {
            return NatClass::UdpBlocked;
        }
        let lets_other_ports_in = self.filtering == "not-port-dependent";
        match (self.behind_nat, self.mapping.as_str()) {
            (Some(false), _) if lets_other_ports_in => NatClass::Open,
            (_, "endpoint-independent") if lets_other_ports_in => NatClass::AddressRestricted,
            (_, "endpoint-independent") => NatClass::PortRestricted,
            (_, "address-dependent" | "address-and-port-dependent") => NatClass::Symmetric,
            // A public address behind a port-dependent filter (a host
            // firewall) is reached like a port-restricted NAT.
            (Some(false), _) if self.filtering == "address-and-port-dependent" => {
                NatClass::PortRestricted
            }
            _ => NatClass::Unknown,
        }
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let yn = |v: Option<bool>| v.map_or("unknown", |b| if b { "yes" } else { "no" });
        let mut out = format!(
            "UDP: {}\n",
            if self.udp {
                "works"
            } else {
                "blocked (no reflector answered)"
            }
        );
        if let Some(local) = self.local {
            out.push_str(&format!("local address: {local}\n"));
        }
        for (server, mapped) in &self.mapped {
            out.push_str(&format!("public address seen by {server}: {mapped}\n"));
        }
        out.push_str(&format!(
            "behind NAT: {}\nmapping: {}\nfiltering: {}\nport preserved: {}\nsequential allocation: {}",
            yn(self.behind_nat),
            self.mapping,
            self.filtering,
            yn(self.port_preserved),
            yn(self.sequential_allocation),
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An RFC 8489 server that does not know PADDING: it answers a request
    /// carrying it with 420 (Unknown Attribute), as RFC 8489 section 6.3.1
    /// requires, and any other request with its mapped address. Returns the
    /// requests it saw (padded or not).
    async fn rfc8489_server(socket: UdpSocket, requests: usize) -> Vec<bool> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        while seen.len() < requests {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            let request = stun::Message::decode(&buf[..n]).unwrap();
            let padded = request.padding > 0;
            seen.push(padded);
            let answer = if padded {
                let mut error = stun::Message::request(request.transaction_id);
                error.kind = stun::BINDING_ERROR;
                error.error_code = Some(stun::UNKNOWN_ATTRIBUTE);
                error
            } else {
                stun::Message::response(request.transaction_id, from)
            };
            socket.send_to(&answer.encode(), from).await.unwrap();
        }
        seen
    }

    #[test]
    fn the_report_gives_the_conference_nat_class() {
        use natter_proto::conference::NatClass;
        let report = |udp: bool, behind: Option<bool>, mapping: &str, filtering: &str| Report {
            udp,
            local: None,
            mapped: Vec::new(),
            mapping: mapping.into(),
            filtering: filtering.into(),
            port_preserved: None,
            sequential_allocation: None,
            behind_nat: behind,
        };
        let cases = [
            (
                report(false, None, "unknown", "unknown"),
                NatClass::UdpBlocked,
            ),
            (
                report(
                    true,
                    Some(false),
                    "endpoint-independent",
                    "not-port-dependent",
                ),
                NatClass::Open,
            ),
            (
                report(
                    true,
                    Some(true),
                    "endpoint-independent",
                    "not-port-dependent",
                ),
                NatClass::AddressRestricted,
            ),
            (
                report(
                    true,
                    Some(true),
                    "endpoint-independent",
                    "address-and-port-dependent",
                ),
                NatClass::PortRestricted,
            ),
            (
                report(true, Some(true), "endpoint-independent", "unknown"),
                NatClass::PortRestricted,
            ),
            (
                report(
                    true,
                    Some(true),
                    "address-and-port-dependent",
                    "address-and-port-dependent",
                ),
                NatClass::Symmetric,
            ),
            (
                report(true, Some(true), "address-dependent", "not-port-dependent"),
                NatClass::Symmetric,
            ),
            (
                report(true, Some(false), "unknown", "address-and-port-dependent"),
                NatClass::PortRestricted,
            ),
            (report(true, None, "unknown", "unknown"), NatClass::Unknown),
        ];
        for (r, class) in cases {
            assert_eq!(r.nat_class(), class, "{r:?}");
        }
    }

    #[tokio::test]
    async fn a_server_refusing_padding_is_asked_again_without_it() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let serving = tokio::spawn(rfc8489_server(server, 3));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let me = client.local_addr().unwrap();
        let wait = Duration::from_secs(2);
        // Padded first, refused, then unpadded and answered.
        let (msg, from) = binding(&client, server_addr, Ask::Rfc5780, wait)
            .await
            .unwrap();
        assert_eq!((msg.mapped, from), (Some(me), server_addr));
        // A plain binding is never padded.
        let (msg, _) = binding(&client, server_addr, Ask::Mapped, wait)
            .await
            .unwrap();
        assert_eq!(msg.mapped, Some(me));
        assert_eq!(serving.await.unwrap(), vec![true, false, false]);
    }
}
