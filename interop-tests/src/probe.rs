//! The NAT classifier (a Rust port of `shared/natlab/probe.py`, RFC 4787 /
//! RFC 5780 style) and the self-check built on it.
//!
//! Plain ASCII over UDP, the same protocol as probe.py:
//! `BIND <nonce>` -> `MAPPED <ip> <port> <nonce>`;
//! `FILT <mode> <nonce>` -> `FILTREPLY <mode> <nonce>` sent from the same
//! socket (`same`), the other port (`port`), the other IP (`ip`), both
//! (`ipport`) or another host (`relay`, via `RELAY <ip> <port> <mode> <nonce>`
//! to s2). TCP: the reflector sends `MAPPED <ip> <port>\n` on connect.
//!
//! The reflector ([`run_reflector`]) and the client ([`classify`]) run as the
//! hidden subcommands `probe-reflector` / `probe-client` of the
//! `natter-interop-tests` binary inside the lab's namespaces; [`selfcheck`]
//! drives them from outside.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};
use crate::exec;
use crate::lab::{self, Client, Lab};
use crate::nat::NatType;

fn nonce() -> String {
    // Unique enough within one probe run: time and a counter, no RNG needed.
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:08x}", t ^ N.fetch_add(0x9e37_79b9, Ordering::Relaxed))
}

// ------------------------------------------------------------------ reflector

/// What a reflector serves.
#[derive(Debug, Clone)]
pub struct ReflectorArgs {
    /// Local IPs (1 or 2).
    pub ips: Vec<Ipv4Addr>,
    /// UDP ports on each IP (1 or 2).
    pub ports: Vec<u16>,
    /// TCP ports (on the first IP).
    pub tcp: Vec<u16>,
    /// The other reflector host, for `FILT relay`.
    pub relay: Option<SocketAddrV4>,
    /// Who may send `RELAY`.
    pub trust: Vec<Ipv4Addr>,
    /// Stop by itself after this long.
    pub max_secs: u64,
}

type Socks = Arc<HashMap<SocketAddrV4, UdpSocket>>;

fn other<T: Copy + PartialEq>(list: &[T], v: T) -> T {
    list.iter().copied().find(|x| *x != v).unwrap_or(v)
}

fn reflector_handle(
    a: &ReflectorArgs,
    socks: &Socks,
    here: SocketAddrV4,
    data: &[u8],
    src: SocketAddr,
) -> std::io::Result<()> {
    let text = String::from_utf8_lossy(data);
    let f: Vec<&str> = text.split_whitespace().collect();
    let Some(sock) = socks.get(&here) else {
        return Ok(());
    };
    let SocketAddr::V4(src4) = src else {
        return Ok(());
    };
    match f.as_slice() {
        ["BIND", n, ..] => {
            sock.send_to(
                format!("MAPPED {} {} {n}", src4.ip(), src4.port()).as_bytes(),
                src,
            )?;
        }
        ["FILT", mode, n, ..] => {
            if *mode == "relay" {
                if let Some(r) = a.relay {
                    let msg = format!("RELAY {} {} relay {n}", src4.ip(), src4.port());
                    sock.send_to(msg.as_bytes(), r)?;
                }
                return Ok(());
            }
            let (ip, port) = (*here.ip(), here.port());
            let out = match *mode {
                "port" => SocketAddrV4::new(ip, other(&a.ports, port)),
                "ip" => SocketAddrV4::new(other(&a.ips, ip), port),
                "ipport" => SocketAddrV4::new(other(&a.ips, ip), other(&a.ports, port)),
                _ => here,
            };
            if *mode != "same" && out == here {
                return Ok(()); // cannot honour: the client sees no reply
            }
            if let Some(s) = socks.get(&out) {
                s.send_to(format!("FILTREPLY {mode} {n}").as_bytes(), src)?;
            }
        }
        ["RELAY", ip, port, mode, n, ..] if a.trust.contains(src4.ip()) => {
            if let (Ok(ip), Ok(port)) = (ip.parse::<Ipv4Addr>(), port.parse::<u16>()) {
                sock.send_to(
                    format!("FILTREPLY {mode} {n}").as_bytes(),
                    SocketAddrV4::new(ip, port),
                )?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn tcp_conn(mut c: TcpStream, src: SocketAddr) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = c.set_write_timeout(Some(Duration::from_secs(30)));
    if c.write_all(format!("MAPPED {} {}\n", src.ip(), src.port()).as_bytes())
        .is_err()
    {
        return;
    }
    let mut n = 0usize;
    let mut buf = [0u8; 65536];
    while let Ok(k) = c.read(&mut buf) {
        if k == 0 {
            break;
        }
        n += k;
    }
    let _ = c.write_all(format!("GOT {n}\n").as_bytes());
}

/// Runs a reflector until `max_secs` pass (or it is killed). Prints
/// `reflector up` once every socket is bound.
pub fn run_reflector(a: ReflectorArgs) -> std::io::Result<()> {
    let mut socks = HashMap::new();
    for ip in &a.ips {
        for p in &a.ports {
            let addr = SocketAddrV4::new(*ip, *p);
            let s = UdpSocket::bind(addr)?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            socks.insert(addr, s);
        }
    }
    let socks: Socks = Arc::new(socks);
    let a = Arc::new(a);
    let deadline = Instant::now() + Duration::from_secs(a.max_secs);
    for here in socks.keys().copied() {
        let (socks, a) = (Arc::clone(&socks), Arc::clone(&a));
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while Instant::now() < deadline {
                let Some(sock) = socks.get(&here) else { return };
                match sock.recv_from(&mut buf) {
                    Ok((k, src)) => {
                        if let Err(e) = reflector_handle(&a, &socks, here, &buf[..k], src) {
                            eprintln!("udp {here}: {e}");
                        }
                    }
                    Err(_) => continue, // timeout: check the deadline
                }
            }
        });
    }
    if let Some(ip) = a.ips.first() {
        for p in &a.tcp {
            let ls = TcpListener::bind(SocketAddrV4::new(*ip, *p))?;
            thread::spawn(move || {
                for c in ls.incoming().flatten() {
                    if let Ok(src) = c.peer_addr() {
                        thread::spawn(move || tcp_conn(c, src));
                    }
                }
            });
        }
    }
    let mut names: Vec<String> = socks.keys().map(ToString::to_string).collect();
    names.sort();
    println!("reflector up: udp {names:?} tcp {:?}", a.tcp);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

// ------------------------------------------------------------------ client

/// Where the client probes.
#[derive(Debug, Clone)]
pub struct ClientArgs {
    /// Reflector s1, first IP.
    pub s1: Ipv4Addr,
    /// Reflector s1, second IP.
    pub s1b: Ipv4Addr,
    /// Reflector s2.
    pub s2: Ipv4Addr,
    /// s1's two UDP ports.
    pub ports: [u16; 2],
    /// TCP ports to check on s1.
    pub tcp_ports: Vec<u16>,
    /// How long to wait for each filtering answer.
    pub wait: Duration,
}

impl Default for ClientArgs {
    fn default() -> Self {
        ClientArgs {
            s1: lab::S1,
            s1b: lab::S1B,
            s2: lab::S2,
            ports: lab::PROBE_PORTS,
            tcp_ports: lab::PROBE_TCP_PORTS.to_vec(),
            wait: Duration::from_secs(1),
        }
    }
}

/// What the probe found out about the NAT in front of a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The host's own address.
    pub local_ip: String,
    /// Did any UDP binding request get an answer?
    pub udp: bool,
    /// EIF, ADF, APDF or none-arrived (None when UDP is blocked).
    pub filtering: Option<String>,
    /// Which FILT modes got an answer through.
    pub filt_detail: BTreeMap<String, bool>,
    /// EIM, ADM, APDM or incomplete.
    pub mapping: Option<String>,
    /// Mapped address per destination (s1:A, s1:B, s1b:A, s1b:B, s2:A).
    pub map_detail: BTreeMap<String, Option<String>>,
    /// Was the local port kept?
    pub port_preserved: Option<bool>,
    /// An endpoint-dependent mapping whose ports, destination after
    /// destination, each follow the one before by a small step
    /// ([`sequential_ports`]): the next mappings can be predicted. `None`
    /// when the mapping is endpoint-independent or incomplete.
    #[serde(default)]
    pub sequential: Option<bool>,
    /// The public address seen by s1.
    pub public_ip: Option<String>,
    /// True if the mapped address differs from the local one.
    pub translated: Option<bool>,
    /// Did a packet to our own public mapping come back (hairpinning)?
    pub hairpin: Option<bool>,
    /// TCP port -> could connect and get an answer.
    pub tcp: BTreeMap<u16, bool>,
    /// The classification: a NAT type name, or `unknown: ...`.
    pub verdict: String,
}

impl ProbeReport {
    /// One-line summary like probe.py's.
    pub fn summary(&self) -> String {
        let yn = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "no",
            None => "n/a",
        };
        let tcp = self
            .tcp
            .iter()
            .map(|(p, ok)| format!("{p}:{}", if *ok { "ok" } else { "blocked" }))
            .collect::<Vec<_>>()
            .join(",");
        format!(
            "mapping={} filtering={} translated={} port_preserved={} sequential={} hairpin={} udp={} tcp={} => {}",
            self.mapping.as_deref().unwrap_or("n/a"),
            self.filtering.as_deref().unwrap_or("n/a"),
            yn(self.translated),
            yn(self.port_preserved),
            yn(self.sequential),
            yn(self.hairpin),
            if self.udp { "ok" } else { "blocked" },
            tcp,
            self.verdict
        )
    }
}

fn recv_until(
    sock: &UdpSocket,
    deadline: Instant,
    want: &dyn Fn(&[&str], SocketAddr) -> bool,
) -> Option<(Vec<String>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        sock.set_read_timeout(Some(left)).ok()?;
        match sock.recv_from(&mut buf) {
            Ok((k, src)) => {
                let text = String::from_utf8_lossy(&buf[..k]).into_owned();
                let f: Vec<&str> = text.split_whitespace().collect();
                if !f.is_empty() && want(&f, src) {
                    return Some((f.iter().map(|s| (*s).to_owned()).collect(), src));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            // e.g. ECONNREFUSED from an earlier ICMP: keep listening
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Sends `msg` to `dest`, retransmitting `tries` times within `timeout`, until
/// an answer matches `want`.
fn transact(
    sock: &UdpSocket,
    msg: &str,
    dest: SocketAddrV4,
    want: &dyn Fn(&[&str], SocketAddr) -> bool,
    timeout: Duration,
    tries: u32,
) -> Option<(Vec<String>, SocketAddr)> {
    let step = timeout / tries;
    for _ in 0..tries {
        if sock.send_to(msg.as_bytes(), dest).is_err() {
            thread::sleep(step);
            continue;
        }
        if let Some(r) = recv_until(sock, Instant::now() + step, want) {
            return Some(r);
        }
    }
    None
}

fn bind_req(sock: &UdpSocket, dest: SocketAddrV4) -> Option<SocketAddrV4> {
    let n = nonce();
    let want = |f: &[&str], _: SocketAddr| f[0] == "MAPPED" && f.len() >= 4 && f[3] == n;
    let (f, _) = transact(
        sock,
        &format!("BIND {n}"),
        dest,
        &want,
        Duration::from_secs(2),
        8,
    )?;
    Some(SocketAddrV4::new(f[1].parse().ok()?, f[2].parse().ok()?))
}

fn filt_req(sock: &UdpSocket, dest: SocketAddrV4, mode: &str, wait: Duration) -> bool {
    let n = nonce();
    let want = |f: &[&str], _: SocketAddr| f[0] == "FILTREPLY" && f.len() >= 3 && f[2] == n;
    transact(sock, &format!("FILT {mode} {n}"), dest, &want, wait, 4).is_some()
}

fn tcp_check(ip: Ipv4Addr, port: u16) -> bool {
    let t = Duration::from_secs(3); // room for one SYN retransmission under loss
    let Ok(mut c) = TcpStream::connect_timeout(&SocketAddr::from((ip, port)), t) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(t));
    let mut line = String::new();
    let ok = BufReader::new(&mut c).read_line(&mut line).is_ok() && line.starts_with("MAPPED");
    let _ = c.shutdown(Shutdown::Both);
    ok
}

fn local_ip_towards(dest: Ipv4Addr) -> Option<Ipv4Addr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect((dest, 9)).ok()?;
    match s.local_addr().ok()? {
        SocketAddr::V4(a) => Some(*a.ip()),
        SocketAddr::V6(_) => None,
    }
}

fn udp() -> std::io::Result<UdpSocket> {
    UdpSocket::bind("0.0.0.0:0")
}

/// Classifies the NAT in front of this host (run inside a host namespace).
pub fn classify(a: &ClientArgs) -> std::io::Result<ProbeReport> {
    let [pa, pb] = a.ports;
    let s1a = SocketAddrV4::new(a.s1, pa);
    let local_ip = local_ip_towards(a.s1).map_or_else(|| "?".into(), |i| i.to_string());
    let mut r = ProbeReport {
        local_ip,
        udp: false,
        filtering: None,
        filt_detail: BTreeMap::new(),
        mapping: None,
        map_detail: BTreeMap::new(),
        port_preserved: None,
        sequential: None,
        public_ip: None,
        translated: None,
        hairpin: None,
        tcp: BTreeMap::new(),
        verdict: String::new(),
    };
    // 1. filtering (RFC 5780 4.4) on a fresh socket that has only talked to s1:A
    {
        let fs = udp()?;
        if bind_req(&fs, s1a).is_some() {
            r.udp = true;
            for mode in ["ipport", "relay", "ip", "port", "same"] {
                r.filt_detail
                    .insert(mode.to_owned(), filt_req(&fs, s1a, mode, a.wait));
            }
            let got = |m: &str| r.filt_detail.get(m).copied().unwrap_or(false);
            r.filtering = Some(
                if got("ipport") || got("relay") || got("ip") {
                    "EIF"
                } else if got("port") {
                    "ADF"
                } else if got("same") {
                    "APDF"
                } else {
                    "none-arrived"
                }
                .to_owned(),
            );
        }
    }
    // 2. mapping (RFC 5780 4.3): ONE fresh socket to five destinations
    if r.udp {
        let ms = udp()?;
        let lport = ms.local_addr()?.port();
        let dests = [
            ("s1:A", SocketAddrV4::new(a.s1, pa)),
            ("s1:B", SocketAddrV4::new(a.s1, pb)),
            ("s1b:A", SocketAddrV4::new(a.s1b, pa)),
            ("s1b:B", SocketAddrV4::new(a.s1b, pb)),
            ("s2:A", SocketAddrV4::new(a.s2, pa)),
        ];
        let maps: Vec<(&str, Option<SocketAddrV4>)> =
            dests.iter().map(|(k, d)| (*k, bind_req(&ms, *d))).collect();
        for (k, v) in &maps {
            r.map_detail
                .insert((*k).to_owned(), v.map(|m| m.to_string()));
        }
        let get = |k: &str| maps.iter().find(|(n, _)| *n == k).and_then(|(_, v)| *v);
        let vals: Vec<SocketAddrV4> = maps.iter().filter_map(|(_, v)| *v).collect();
        r.mapping = Some(
            if vals.len() < maps.len() {
                "incomplete"
            } else if vals.iter().all(|v| *v == vals[0]) {
                "EIM"
            } else if get("s1:A") == get("s1:B") && get("s1b:A") == get("s1b:B") {
                "ADM"
            } else {
                "APDM"
            }
            .to_owned(),
        );
        if matches!(r.mapping.as_deref(), Some("ADM" | "APDM")) {
            let ports: Vec<u16> = vals.iter().map(SocketAddrV4::port).collect();
            r.sequential = Some(sequential_ports(&ports));
        }
        let first = get("s1:A");
        r.port_preserved = first.map(|m| m.port() == lport);
        r.public_ip = first.map(|m| m.ip().to_string());
        r.translated = first.map(|m| m.ip().to_string() != r.local_ip);
        // 3. hairpinning: a second socket sends to the first one's public mapping
        if let Some(first) = first {
            let hs = udp()?;
            let _ = bind_req(&hs, s1a);
            let n = nonce();
            let _ = hs.send_to(format!("HAIRPIN {n}").as_bytes(), first);
            let want = |f: &[&str], _: SocketAddr| f[0] == "HAIRPIN" && f.get(1) == Some(&&*n);
            r.hairpin =
                Some(recv_until(&ms, Instant::now() + Duration::from_millis(500), &want).is_some());
        }
    }
    // 4. TCP reachability
    for p in &a.tcp_ports {
        r.tcp.insert(*p, tcp_check(a.s1, *p));
    }
    r.verdict = verdict(&r);
    Ok(r)
}

/// The largest step between two mappings made one after the other that
/// still counts as sequential allocation (the client's prediction,
/// `natter_client::gather::predict`, takes the same steps).
pub const MAX_SEQUENTIAL_STEP: u16 = 4;

/// Whether `ports`, mapped one after the other, were allocated
/// sequentially: every one follows the one before by 1 to
/// [`MAX_SEQUENTIAL_STEP`] (a randomising NAT does that by chance with a
/// probability of about (4 / 64 K) per step). Needs at least two ports.
pub fn sequential_ports(ports: &[u16]) -> bool {
    ports.len() >= 2
        && ports
            .windows(2)
            .all(|w| (1..=MAX_SEQUENTIAL_STEP).contains(&w[1].wrapping_sub(w[0])))
}

/// The NAT type a report shows, or `unknown: <why>`.
pub fn verdict(r: &ProbeReport) -> String {
    let tcp = |p: u16| r.tcp.get(&p).copied();
    if !r.udp {
        return if tcp(80) == Some(true) && tcp(443) == Some(true) && tcp(8080) != Some(true) {
            NatType::UdpBlocked.name().to_owned()
        } else {
            "unknown: UDP blocked but TCP is not exactly 80+443".to_owned()
        };
    }
    if tcp(80) == Some(false) || tcp(443) == Some(false) {
        return "unknown: UDP works but TCP 80/443 do not".to_owned();
    }
    let m = r.mapping.as_deref().unwrap_or("?");
    let f = r.filtering.as_deref().unwrap_or("?");
    match (m, f, r.translated) {
        ("EIM", "EIF", Some(false)) => NatType::Open.name().to_owned(),
        (_, _, Some(false)) => format!("unknown: untranslated but {m}/{f}"),
        ("EIM", "EIF", _) => NatType::FullCone.name().to_owned(),
        ("EIM", "ADF", _) => NatType::AddressRestricted.name().to_owned(),
        ("EIM", "APDF", _) => NatType::PortRestricted.name().to_owned(),
        ("ADM" | "APDM", _, _) if r.sequential == Some(true) => {
            NatType::SymmetricSeq.name().to_owned()
        }
        ("ADM" | "APDM", _, _) => NatType::Symmetric.name().to_owned(),
        _ => format!("unknown: mapping={m} filtering={f}"),
    }
}

// ------------------------------------------------------------------ self-check

/// The self-check of one router.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    /// The declared type.
    pub declared: NatType,
    /// The probe's report.
    pub report: ProbeReport,
    /// True if the report's verdict is the declared type.
    pub ok: bool,
}

/// Runs the probe client in every client's host namespace (in parallel) and
/// compares the verdicts with the declared types. Fails only if a probe
/// cannot run; mismatches are in the verdicts (see [`require_all_ok`]).
pub fn selfcheck(lab: &Lab, clients: &[Client], wait: Duration) -> Result<Vec<Verdict>> {
    let exe = lab.config().probe_exe.clone();
    let wait_ms = wait.as_millis().to_string();
    let results: Vec<Result<Verdict>> = thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .map(|c| {
                let mut cmd = lab.command(&c.host_ns, &exe);
                cmd.args(["probe-client", "--wait-ms", &wait_ms]);
                let declared = c.nat;
                s.spawn(move || -> Result<Verdict> {
                    let line = exec::describe(&cmd);
                    let out = exec::run(cmd, None, Duration::from_secs(60))?;
                    let report: ProbeReport =
                        serde_json::from_str(out.stdout.trim()).map_err(|e| {
                            LabError::Other(format!(
                                "`{line}` printed no report ({e}): {}{}",
                                out.stdout, out.stderr
                            ))
                        })?;
                    let ok = report.verdict == declared.name();
                    Ok(Verdict {
                        declared,
                        report,
                        ok,
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(LabError::Other("probe thread panicked".into())))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// Fails loudly (with every mismatch) unless every verdict is as declared.
pub fn require_all_ok(verdicts: &[Verdict]) -> Result<()> {
    let bad: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.ok)
        .map(|v| {
            format!(
                "declared {} but measured {}",
                v.declared,
                v.report.summary()
            )
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(LabError::SelfCheck(bad.join("; ")))
    }
}

/// The verdict table, one line per router.
pub fn verdict_table(verdicts: &[Verdict]) -> String {
    let mut s = format!("{:<20} {:<6} {}\n", "declared", "ok", "measured");
    for v in verdicts {
        s.push_str(&format!(
            "{:<20} {:<6} {}\n",
            v.declared.name(),
            if v.ok { "PASS" } else { "FAIL" },
            v.report.summary()
        ));
    }
    s
}

/// Builds one router of every given type in `lab`, classifies them all and
/// returns the verdicts (the routers are removed again).
pub fn selfcheck_types(lab: &mut Lab, types: &[NatType], wait: Duration) -> Result<Vec<Verdict>> {
    let mut clients = Vec::new();
    let result = (|| {
        for (i, t) in types.iter().enumerate() {
            let idx = u8::try_from(i + 1)
                .map_err(|_| LabError::Other("too many routers for one self-check".into()))?;
            clients.push(lab.add_client(idx, *t)?);
        }
        selfcheck(lab, &clients, wait)
    })();
    for c in &clients {
        lab.remove_client(c)?;
    }
    result
}
