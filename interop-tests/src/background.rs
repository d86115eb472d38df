//! Non-Natter background traffic for the labelled captures (issue 17): the
//! flows a traffic classifier must *not* call Natter, generated in the same
//! lab as the Natter scenarios. Small generators, run as the hidden
//! `bg-traffic` subcommand inside the namespaces:
//!
//! | flow | port (on [`BG_IP`]) | what |
//! |---|---|---|
//! | RTP-like stream | UDP [`RTP_PORT`] | 50 packets/s, 12-byte RTP header (version 2, payload type 111, sequence, timestamp +960, one SSRC) and 60 random bytes (an SRTP payload looks random) |
//! | plain UDP stream | UDP [`UDP_PORT`] | 100 packets/s of 1,000 random bytes (a VPN or bulk transfer) |
//! | DNS | UDP [`DNS_PORT`] | 10 A queries a second, each answered by a small responder |
//! | TLS download | TCP [`TLS_PORT`] | `openssl s_server -WWW` serving 512 KiB to `curl` (real programs) |
//!
//! The ground truth of a background packet is its endpoint: the generators'
//! ports on [`BG_IP`] carry nothing else.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::error::{LabError, Result};

/// The background server's address (server subnet).
pub const BG_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 60);
/// RTP-like stream.
pub const RTP_PORT: u16 = 5004;
/// Plain UDP stream.
pub const UDP_PORT: u16 = 9000;
/// DNS.
pub const DNS_PORT: u16 = 53;
/// TLS download (openssl s_server).
pub const TLS_PORT: u16 = 8443;

/// The kind of a background flow from its server endpoint, if it is one.
pub fn kind_of(server: SocketAddr) -> Option<&'static str> {
    if server.ip() != std::net::IpAddr::V4(BG_IP) {
        return None;
    }
    match server.port() {
        RTP_PORT => Some("background-rtp"),
        UDP_PORT => Some("background-udp"),
        DNS_PORT => Some("background-dns"),
        TLS_PORT => Some("background-tls"),
        _ => None,
    }
}

fn io<T>(what: &str, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| LabError::io(what, e))
}

/// The server side: a DNS responder on [`DNS_PORT`] and sinks on the two
/// stream ports, for `secs` seconds.
pub fn serve(ip: Ipv4Addr, secs: u64) -> Result<()> {
    let dns = io("bind DNS", UdpSocket::bind(SocketAddrV4::new(ip, DNS_PORT)))?;
    let sinks = [RTP_PORT, UDP_PORT]
        .into_iter()
        .map(|p| io("bind sink", UdpSocket::bind(SocketAddrV4::new(ip, p))))
        .collect::<Result<Vec<_>>>()?;
    let until = Instant::now() + Duration::from_secs(secs);
    for s in sinks {
        thread::spawn(move || {
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 2048];
            while Instant::now() < until {
                let _ = s.recv_from(&mut buf);
            }
        });
    }
    println!("background server up");
    io(
        "DNS timeout",
        dns.set_read_timeout(Some(Duration::from_millis(200))),
    )?;
    let mut buf = [0u8; 512];
    while Instant::now() < until {
        let Ok((n, from)) = dns.recv_from(&mut buf) else {
            continue;
        };
        if let Some(answer) = dns_answer(&buf[..n]) {
            let _ = dns.send_to(&answer, from);
        }
    }
    Ok(())
}

/// A DNS query for `name` (type A, recursion desired).
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len().min(63) as u8);
        q.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The answer to a query: the question echoed and one A record
/// (192.0.2.1, TTL 60); `None` for anything that is not a query.
pub fn dns_answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 17 || query[2] & 0x80 != 0 {
        return None;
    }
    let mut a = query.to_vec();
    a[2] = 0x81;
    a[3] = 0x80;
    a[6..8].copy_from_slice(&1u16.to_be_bytes());
    a.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
    Some(a)
}

/// The client side: the RTP-like stream, the plain UDP stream and the DNS
/// queries toward `server`, all at once, for `secs` seconds.
pub fn send(server: Ipv4Addr, secs: u64) -> Result<()> {
    let dur = Duration::from_secs(secs);
    let rtp = thread::spawn(move || -> Result<()> {
        let s = io("bind", UdpSocket::bind("0.0.0.0:0"))?;
        let mut rng = rand::thread_rng();
        let ssrc = rng.next_u32();
        let (mut seq, mut ts) = (rng.next_u32() as u16, rng.next_u32());
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < dur {
            let mut p = vec![0x80, 111];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&ts.to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            let mut body = [0u8; 60];
            rng.fill_bytes(&mut body);
            p.extend_from_slice(&body);
            let _ = s.send_to(&p, SocketAddrV4::new(server, RTP_PORT));
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(960);
            n += 1;
            pace(start, n, Duration::from_millis(20));
        }
        Ok(())
    });
    let bulk = thread::spawn(move || -> Result<()> {
        let s = io("bind", UdpSocket::bind("0.0.0.0:0"))?;
        let mut rng = rand::thread_rng();
        let start = Instant::now();
        let mut n = 0u32;
        let mut p = [0u8; 1000];
        while start.elapsed() < dur {
            rng.fill_bytes(&mut p);
            let _ = s.send_to(&p, SocketAddrV4::new(server, UDP_PORT));
            n += 1;
            pace(start, n, Duration::from_millis(10));
        }
        Ok(())
    });
    let dns = thread::spawn(move || -> Result<()> {
        let s = io("bind", UdpSocket::bind("0.0.0.0:0"))?;
        io(
            "timeout",
            s.set_read_timeout(Some(Duration::from_millis(90))),
        )?;
        let start = Instant::now();
        let mut n = 0u32;
        let mut buf = [0u8; 512];
        while start.elapsed() < dur {
            let q = dns_query(n as u16, &format!("host{n}.example.org"));
            let _ = s.send_to(&q, SocketAddrV4::new(server, DNS_PORT));
            let _ = s.recv_from(&mut buf);
            n += 1;
            pace(start, n, Duration::from_millis(100));
        }
        Ok(())
    });
    for t in [rtp, bulk, dns] {
        t.join()
            .map_err(|_| LabError::Other("a background generator panicked".into()))??;
    }
    Ok(())
}

/// Sleeps until packet `n` is due (every `every` since `start`).
fn pace(start: Instant, n: u32, every: Duration) {
    let due = start + every * n;
    let now = Instant::now();
    if due > now {
        thread::sleep(due - now);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_dns_query_gets_an_answer_and_an_answer_does_not() {
        let q = dns_query(7, "host1.example.org");
        let a = dns_answer(&q).unwrap();
        assert_eq!(&a[..2], &7u16.to_be_bytes());
        assert_eq!(a[2] & 0x80, 0x80);
        assert!(dns_answer(&a).is_none());
        assert!(dns_answer(&[0; 5]).is_none());
    }

    #[test]
    fn only_the_generators_endpoints_are_background() {
        let at = |p| SocketAddr::from((BG_IP, p));
        assert_eq!(kind_of(at(RTP_PORT)), Some("background-rtp"));
        assert_eq!(kind_of(at(443)), None);
        assert_eq!(
            kind_of(SocketAddr::from(([198, 51, 100, 30], RTP_PORT))),
            None
        );
    }
}
