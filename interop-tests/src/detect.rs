//! Published detectors, evaluated on the labelled captures (issue 17,
//! item 4): `natter-interop-tests detect DIR`.
//!
//! **(a) Statistical, after Bonfiglio et al. 2007** ("Revealing Skype
//! traffic: when randomness plays with you"). Per UDP flow (one direction,
//! as seen on a router's wan side), windows of [`WINDOW`] packets; in each,
//! the first 8 payload bytes are cut into 16 groups of 4 bits and every
//! group gets Pearson's chi-square against the uniform distribution,
//! `sum_v (O_v - N/16)^2 / (N/16)`. A random group scores about 15 (15
//! degrees of freedom), a constant one `15 N`, a group taking 8 values
//! equally often `N`. The signature is Natter's SoM header read this way
//! (PROTOCOL.md section 7), as Bonfiglio's was Skype's: the function
//! byte's low nibble (group 5) is (nearly) constant, its high nibble (group
//! 4: three random bits and the function's high bit) takes about 8 values,
//! and the sealed bytes after the 3-byte header (groups 6..15) look random;
//! the message id (groups 0..3) is a counter and is not used. A window
//! matching is **CSC** (chi-square classifier). Bonfiglio's second
//! classifier looked at packet sizes and inter-arrival times (a naive
//! Bayes classifier trained on Skype's codecs); here its rule form: mean
//! payload at most 200 bytes and median inter-arrival 10 to 40 ms (a voice
//! stream of 20 to 100 packets/s). **CSC+size** needs both. A flow is
//! flagged when at least half of its windows are; a flow of fewer than
//! [`WINDOW`] packets is never flagged (not enough to judge).
//!
//! **(b) Active probing**, the detector the seeds describe (a course
//! project after nmap's service detection: "sends some packets to the
//! sender and the receiver of each packet and tries to match their response
//! to one of the signatures"): after a scenario, an observer host on the
//! internet probes both ends of every flow seen on the routers' wan sides
//! ([`probe_endpoint`]): on UDP a STUN Binding request (signature: an
//! answer with `SOFTWARE "natter"`), a relay bind with a zero token
//! (signature: a 40-byte `NRLY` reply) and a QUIC handshake offering ALPN
//! `natter/1` (signature: the server picks it); on TCP a TLS handshake
//! offering `natter/1`. A flow is flagged when either end matched.
//!
//! Ground truth per flow is the labels: a flow is Natter when most of its
//! packets are labelled Natter, background when most are `background-*`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use natter_decrypt::Transport;
use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};
use crate::lab::Lab;
use crate::labels::{Iface, Labels};
use crate::scenario::io;

/// Packets per window (Bonfiglio et al. used windows of tens to hundreds).
pub const WINDOW: usize = 80;
/// Chi-square of a group below which it counts as random: the 0.999
/// quantile of chi-square with 15 degrees of freedom.
pub const RANDOM_MAX: f64 = 37.7;

/// Pearson's chi-square of each 4-bit group of the first 8 bytes of
/// `payloads` (all at least 8 bytes long) against the uniform distribution.
pub fn nibble_chi_square(payloads: &[&[u8]]) -> [f64; 16] {
    let mut counts = [[0u32; 16]; 16];
    for p in payloads {
        for (byte, b) in p.iter().take(8).enumerate() {
            counts[2 * byte][usize::from(b >> 4)] += 1;
            counts[2 * byte + 1][usize::from(b & 0x0f)] += 1;
        }
    }
    let expected = payloads.len() as f64 / 16.0;
    let mut chi = [0.0; 16];
    if expected == 0.0 {
        return chi;
    }
    for (g, c) in counts.iter().enumerate() {
        chi[g] = c
            .iter()
            .map(|&o| {
                let d = f64::from(o) - expected;
                d * d / expected
            })
            .sum();
    }
    chi
}

/// Whether a window's chi-square vector matches Natter's SoM header
/// (see the module docs); `n` packets in the window.
pub fn csc_matches(chi: &[f64; 16], n: usize) -> bool {
    let n = n as f64;
    let function_constant = chi[5] > 7.5 * n;
    let three_random_bits = chi[4] > n / 4.0 && chi[4] < 4.0 * n;
    let sealed_random = chi[6..].iter().filter(|&&c| c < RANDOM_MAX).count() >= 9;
    function_constant && three_random_bits && sealed_random
}

/// The size and inter-arrival rule (see the module docs): `sizes` payload
/// lengths, `times` capture times (s) of a window.
pub fn voice_like(sizes: &[usize], times: &[f64]) -> bool {
    if sizes.is_empty() || times.len() < 2 {
        return false;
    }
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    let mut gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_by(f64::total_cmp);
    let median = gaps[gaps.len() / 2];
    mean <= 200.0 && (0.010..=0.040).contains(&median)
}

/// One flow of one interface, with its ground truth and verdicts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowVerdict {
    pub iface: String,
    pub transport: String,
    pub src: String,
    pub dst: String,
    pub packets: usize,
    /// The label most of its packets have.
    pub label: String,
    /// Ground truth: most packets are Natter's.
    pub natter: bool,
    /// Ground truth: most packets are background traffic.
    pub background: bool,
    /// It carries voice or silence frames.
    pub media: bool,
    /// Full windows / windows matching CSC / matching CSC and the size rule.
    pub windows: usize,
    pub csc_windows: usize,
    pub csc_size_windows: usize,
    pub csc: bool,
    pub csc_size: bool,
    /// The active prober matched either end (its signature), if probed.
    pub active: Option<String>,
}

/// The active prober's answer for one endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbeResult {
    pub transport: String,
    pub addr: SocketAddr,
    /// Something answered at all.
    pub answered: bool,
    /// The Natter signature matched: `stun`, `relay`, `quic` or `tls`.
    pub signature: Option<String>,
}

/// The evaluation of one scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScenarioEval {
    pub scenario: String,
    pub natter_flows: usize,
    pub natter_media_flows: usize,
    /// Natter media flows long enough to judge (at least one window).
    pub natter_media_judged: usize,
    pub background_flows: usize,
    pub background_judged: usize,
    pub csc_tp: usize,
    pub csc_fp: usize,
    pub csc_size_tp: usize,
    pub csc_size_fp: usize,
    pub active_tp: usize,
    pub active_fp: usize,
    /// Background flows flagged, by label (for the report).
    pub fp_labels: BTreeMap<String, usize>,
    pub flows: Vec<FlowVerdict>,
}

/// Runs both detectors on one scenario directory (its wan-side captures,
/// its labels and `active.json` if there is one).
pub fn evaluate(dir: &Path) -> Result<ScenarioEval> {
    let labels = Labels::read(dir)?;
    let active: Vec<ProbeResult> = match fs::read_to_string(dir.join("active.json")) {
        Ok(t) => {
            serde_json::from_str(&t).map_err(|e| LabError::Other(format!("active.json: {e}")))?
        }
        Err(_) => Vec::new(),
    };
    let matched: BTreeMap<(String, SocketAddr), String> = active
        .iter()
        .filter_map(|r| {
            r.signature
                .clone()
                .map(|s| ((r.transport.clone(), r.addr), s))
        })
        .collect();
    let probed = !active.is_empty();
    let mut eval = ScenarioEval {
        scenario: labels.scenario.clone(),
        ..ScenarioEval::default()
    };
    for iface in labels
        .interfaces
        .iter()
        .filter(|i| i.name.ends_with("-wan"))
    {
        let by_frame: BTreeMap<u64, &crate::labels::PacketLabel> = labels
            .packets
            .iter()
            .filter(|p| p.iface == iface.name)
            .map(|p| (p.frame, p))
            .collect();
        // (transport, src, dst) -> packets (time, len, first 8 bytes)
        type Pkt = (f64, usize, Vec<u8>, u64);
        let mut flows: BTreeMap<(Transport, SocketAddr, SocketAddr), Vec<Pkt>> = BTreeMap::new();
        natter_decrypt::read_capture(&dir.join(&iface.file), |p| {
            if let Some(s) = p.link.and_then(|l| natter_decrypt::segment(l, &p.data)) {
                flows.entry((s.transport, s.src, s.dst)).or_default().push((
                    p.time.as_secs_f64(),
                    s.payload.len(),
                    s.payload.iter().take(8).copied().collect(),
                    p.frame,
                ));
            }
        })
        .map_err(|e| LabError::Other(e.to_string()))?;
        for ((transport, src, dst), pkts) in flows {
            let mut label_counts: BTreeMap<&str, usize> = BTreeMap::new();
            let (mut natter, mut bg, mut media) = (0, 0, false);
            for (_, _, _, frame) in &pkts {
                if let Some(l) = by_frame.get(frame) {
                    *label_counts.entry(l.label.as_str()).or_default() += 1;
                    natter += usize::from(l.natter);
                    bg += usize::from(l.label.starts_with("background-"));
                    media |= matches!(l.label.as_str(), "voice" | "silence" | "hold");
                }
            }
            let label = label_counts
                .iter()
                .max_by_key(|(_, n)| **n)
                .map_or("-", |(l, _)| *l)
                .to_owned();
            let mut v = FlowVerdict {
                iface: iface.name.clone(),
                transport: transport.as_str().into(),
                src: src.to_string(),
                dst: dst.to_string(),
                packets: pkts.len(),
                label,
                natter: 2 * natter > pkts.len(),
                background: 2 * bg > pkts.len(),
                media,
                windows: 0,
                csc_windows: 0,
                csc_size_windows: 0,
                csc: false,
                csc_size: false,
                active: None,
            };
            if transport == Transport::Udp {
                for w in pkts.chunks_exact(WINDOW) {
                    if w.iter().any(|p| p.2.len() < 8) {
                        continue;
                    }
                    v.windows += 1;
                    let heads: Vec<&[u8]> = w.iter().map(|p| p.2.as_slice()).collect();
                    let chi = nibble_chi_square(&heads);
                    if csc_matches(&chi, w.len()) {
                        v.csc_windows += 1;
                        let sizes: Vec<usize> = w.iter().map(|p| p.1).collect();
                        let times: Vec<f64> = w.iter().map(|p| p.0).collect();
                        if voice_like(&sizes, &times) {
                            v.csc_size_windows += 1;
                        }
                    }
                }
                v.csc = v.windows > 0 && 2 * v.csc_windows >= v.windows;
                v.csc_size = v.windows > 0 && 2 * v.csc_size_windows >= v.windows;
            }
            if probed {
                let t = transport.as_str().to_owned();
                v.active = matched
                    .get(&(t.clone(), src))
                    .or_else(|| matched.get(&(t, dst)))
                    .cloned();
            }
            if v.natter {
                eval.natter_flows += 1;
                if v.media {
                    eval.natter_media_flows += 1;
                    eval.natter_media_judged += usize::from(v.windows > 0);
                }
                eval.csc_tp += usize::from(v.csc);
                eval.csc_size_tp += usize::from(v.csc_size);
                eval.active_tp += usize::from(v.active.is_some());
            } else {
                if v.background {
                    eval.background_flows += 1;
                    eval.background_judged += usize::from(v.windows > 0);
                }
                let flagged = v.csc || v.csc_size || v.active.is_some();
                eval.csc_fp += usize::from(v.csc);
                eval.csc_size_fp += usize::from(v.csc_size);
                eval.active_fp += usize::from(v.active.is_some());
                if flagged {
                    *eval.fp_labels.entry(v.label.clone()).or_default() += 1;
                }
            }
            eval.flows.push(v);
        }
    }
    Ok(eval)
}

/// The evaluation as a Markdown table (one row per scenario).
pub fn markdown(evals: &[ScenarioEval]) -> String {
    let mut s = String::from(
        "| scenario | Natter flows (media, judged) | non-Natter flows (background, judged) | CSC TP | CSC FP | CSC+size TP | CSC+size FP | active TP | active FP |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for e in evals {
        let others = e.flows.iter().filter(|f| !f.natter).count();
        s.push_str(&format!(
            "| {} | {} ({}, {}) | {} ({}, {}) | {} | {} | {} | {} | {} | {} |\n",
            e.scenario,
            e.natter_flows,
            e.natter_media_flows,
            e.natter_media_judged,
            others,
            e.background_flows,
            e.background_judged,
            e.csc_tp,
            e.csc_fp,
            e.csc_size_tp,
            e.csc_size_fp,
            e.active_tp,
            e.active_fp
        ));
    }
    s
}

/// Probes one endpoint as the active detector does (see the module docs).
pub async fn probe_endpoint(
    transport: Transport,
    addr: SocketAddr,
    quic: Option<&quinn::Endpoint>,
) -> ProbeResult {
    let mut r = ProbeResult {
        transport: transport.as_str().into(),
        addr,
        answered: false,
        signature: None,
    };
    let wait = Duration::from_millis(600);
    match transport {
        Transport::Udp => {
            if let Ok(sock) = tokio::net::UdpSocket::bind("0.0.0.0:0").await {
                let tid: [u8; 12] = rand::random();
                // padded, as Natter's clients pad theirs: the reflector
                // answers a bare request without SOFTWARE (amplification)
                let mut request = natter_proto::stun::Message::request(tid);
                request.pad_to(natter_proto::stun::PADDED_REQUEST_LEN);
                let stun = request.encode();
                let bind = natter_proto::relay::encode_bind(&[0; 16], &[0; 16], rand::random(), 0);
                for (probe, sig) in [(stun, "stun"), (bind, "relay")] {
                    if sock.send_to(&probe, addr).await.is_err() {
                        continue;
                    }
                    let mut buf = [0u8; 1500];
                    if let Ok(Ok((n, from))) =
                        tokio::time::timeout(wait, sock.recv_from(&mut buf)).await
                    {
                        if from != addr {
                            continue;
                        }
                        r.answered = true;
                        let a = &buf[..n];
                        let hit = match sig {
                            "stun" => {
                                natter_proto::stun::looks_like_stun(a)
                                    && a.windows(6).any(|w| w == b"natter")
                            }
                            _ => natter_proto::relay::decode_bind_reply(a).is_ok(),
                        };
                        if hit {
                            r.signature = Some(sig.into());
                            return r;
                        }
                    }
                }
            }
            if let Some(ep) = quic
                && let Ok(connecting) = ep.connect(addr, "natter")
                && let Ok(Ok(conn)) =
                    tokio::time::timeout(Duration::from_millis(1500), connecting).await
            {
                r.answered = true;
                let alpn = conn
                    .handshake_data()
                    .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                    .and_then(|h| h.protocol);
                if alpn.as_deref() == Some(natter_net::ALPN) {
                    r.signature = Some("quic".into());
                }
                conn.close(0u32.into(), b"");
            }
        }
        Transport::Tcp => {
            let res = tokio::task::spawn_blocking(move || tls_alpn(addr)).await;
            if let Ok((answered, alpn)) = res {
                r.answered = answered;
                if alpn.as_deref() == Some(natter_net::ALPN) {
                    r.signature = Some("tls".into());
                }
            }
        }
    }
    r
}

/// A TLS handshake offering ALPN `natter/1`: (connected, ALPN the server
/// chose).
fn tls_alpn(addr: SocketAddr) -> (bool, Option<Vec<u8>>) {
    let Ok(mut tcp) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(600))
    else {
        return (false, None);
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(1500)));
    let _ = tcp.set_write_timeout(Some(Duration::from_millis(1500)));
    let Ok(config) = natter_net::tls::insecure_client_tls_config() else {
        return (true, None);
    };
    let Ok(name) = rustls::pki_types::ServerName::try_from("natter") else {
        return (true, None);
    };
    let Ok(mut conn) = rustls::ClientConnection::new(Arc::clone(&config), name) else {
        return (true, None);
    };
    while conn.is_handshaking() {
        if conn.complete_io(&mut tcp).is_err() {
            return (true, None);
        }
    }
    (true, conn.alpn_protocol().map(<[u8]>::to_vec))
}

/// The hidden `active-probe` subcommand: probes every target (lines
/// `udp ADDR` / `tcp ADDR` of `targets`), 32 at a time, writes the results
/// as JSON to `out`.
pub fn active_probe_main(targets: &Path, out: &Path) -> Result<()> {
    let text = io("read targets", fs::read_to_string(targets))?;
    let mut list = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (t, a) = line
            .split_once(' ')
            .ok_or_else(|| LabError::Other(format!("bad target line {line:?}")))?;
        let t = match t {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            _ => return Err(LabError::Other(format!("bad transport in {line:?}"))),
        };
        let a: SocketAddr = a
            .parse()
            .map_err(|e| LabError::Other(format!("bad address in {line:?}: {e}")))?;
        list.push((t, a));
    }
    let rt = io(
        "tokio runtime",
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .worker_threads(2)
            .build(),
    )?;
    let results = rt.block_on(async {
        let ep = natter_net::client_endpoint(
            SocketAddr::from(([0, 0, 0, 0], 0)),
            &natter_net::endpoint::TransportSettings::default(),
        )
        .ok();
        let mut results = Vec::new();
        for chunk in list.chunks(32) {
            let mut set = tokio::task::JoinSet::new();
            for (t, a) in chunk.iter().copied() {
                let ep = ep.clone();
                set.spawn(async move { probe_endpoint(t, a, ep.as_ref()).await });
            }
            while let Some(r) = set.join_next().await {
                if let Ok(r) = r {
                    results.push(r);
                }
            }
        }
        results.sort_by(|a: &ProbeResult, b| (&a.transport, a.addr).cmp(&(&b.transport, b.addr)));
        results
    });
    let json = serde_json::to_string_pretty(&results)
        .map_err(|e| LabError::Other(format!("serialize: {e}")))?;
    io("write probe results", fs::write(out, json))
}

/// Runs the prober in the observer namespace `ns` against both ends of
/// every flow of the wan-side captures; writes `dir/active.json`.
pub fn run_active_probe(
    lab: &mut Lab,
    ns: &str,
    exe: &Path,
    dir: &Path,
    ifaces: &[Iface],
) -> Result<()> {
    let wan: Vec<Iface> = ifaces
        .iter()
        .filter(|i| i.name.ends_with("-wan"))
        .cloned()
        .collect();
    let eps: BTreeSet<(Transport, SocketAddr)> = crate::labels::endpoints(dir, &wan)?;
    let targets: Vec<String> = eps
        .into_iter()
        .filter(|(_, a)| a.ip() != std::net::IpAddr::V4(crate::labels::OBSERVER_IP))
        .map(|(t, a)| format!("{} {a}", t.as_str()))
        .collect();
    let tfile = dir.join("work").join("probe-targets.txt");
    io("write targets", fs::write(&tfile, targets.join("\n")))?;
    let out = dir.join("active.json");
    let (t, o) = (tfile.display().to_string(), out.display().to_string());
    lab.exec(
        ns,
        exe,
        &["active-probe", "--targets", &t, "--out", &o],
        &[],
        Duration::from_secs(120),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use natter_proto::media::Sealer;
    use natter_proto::som::Function;

    fn keys() -> natter_proto::handshake::DirectionKeys {
        natter_proto::handshake::DirectionKeys {
            key: [3; 32],
            iv: [4; 12],
        }
    }

    #[test]
    fn sealed_voice_matches_the_signature_and_rtp_and_random_bytes_do_not() {
        let mut sealer = Sealer::new(&keys(), 1000);
        let mut som = Vec::new();
        for i in 0..WINDOW {
            let mut d = Vec::new();
            sealer
                .seal(
                    Function::Data,
                    rand::random::<u8>() & 7,
                    &[i as u8; 42],
                    &mut d,
                )
                .unwrap();
            som.push(d);
        }
        let heads: Vec<&[u8]> = som.iter().map(Vec::as_slice).collect();
        assert!(csc_matches(&nibble_chi_square(&heads), WINDOW));

        let rtp: Vec<Vec<u8>> = (0..WINDOW as u16)
            .map(|i| {
                let mut p = vec![0x80, 111];
                p.extend_from_slice(&(1000 + i).to_be_bytes());
                p.extend_from_slice(&(u32::from(i) * 960).to_be_bytes());
                p.extend_from_slice(&rand::random::<[u8; 20]>());
                p
            })
            .collect();
        let heads: Vec<&[u8]> = rtp.iter().map(Vec::as_slice).collect();
        assert!(!csc_matches(&nibble_chi_square(&heads), WINDOW));

        let random: Vec<[u8; 16]> = (0..WINDOW).map(|_| rand::random()).collect();
        let heads: Vec<&[u8]> = random.iter().map(|r| &r[..]).collect();
        assert!(!csc_matches(&nibble_chi_square(&heads), WINDOW));
    }

    #[test]
    fn the_size_rule_wants_small_packets_at_voice_rates() {
        let times: Vec<f64> = (0..10).map(|i| f64::from(i) * 0.02).collect();
        assert!(voice_like(&[66; 10], &times));
        assert!(!voice_like(&[1000; 10], &times));
        let slow: Vec<f64> = (0..10).map(|i| f64::from(i) * 0.1).collect();
        assert!(!voice_like(&[66; 10], &slow));
    }
}
