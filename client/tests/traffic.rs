//! The traffic study kit (issue 17) against real processes: a capture of a
//! real call in a network namespace of the test's own, opened with tshark
//! and the dissector `tools/wireshark/natter.lua`, and with `natter-decrypt`
//! and the key log the clients wrote under `NATTER_KEYLOG`. Needs root
//! (namespaces), tcpdump and tshark (scripts/deps).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::call::{call, field, speech};
use common::{Cluster, Netns, workspace_bin};

/// tcpdump on the loopback of a namespace, stopped (SIGINT) on drop; at
/// most 200 000 packets.
struct Capture {
    child: Option<Child>,
    path: PathBuf,
    ns: String,
}

/// The payload of the UDP datagram that ends a capture (to the discard
/// port, 9): once tcpdump wrote it, it wrote everything before it.
const END_MARK: &[u8] = b"natter-capture-end";

impl Capture {
    fn start(ns: &Netns, path: &Path) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "tcpdump", "-i", "lo", "-n", "-U"])
            .args(["-s", "0", "-c", "200000", "-w"])
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump is needed: run scripts/deps");
        // tcpdump says "listening on lo" once it captures.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            let n = stderr.read_line(&mut line).unwrap();
            assert!(n > 0, "tcpdump ended before capturing");
            if line.contains("listening on") {
                break;
            }
        }
        Self {
            child: Some(child),
            path: path.to_owned(),
            ns: ns.name.clone(),
        }
    }

    /// Stops the capture once it holds everything sent so far (tcpdump
    /// drops what the kernel still buffers when interrupted, so first an
    /// end mark must have reached the file) and returns its file.
    fn stop(mut self) -> PathBuf {
        let mark = String::from_utf8(END_MARK.to_vec()).unwrap();
        common::wait_for(
            || {
                let _ = Command::new("ip")
                    .args(["netns", "exec", &self.ns, "bash", "-c"])
                    .arg(format!("printf {mark} > /dev/udp/127.0.0.1/9"))
                    .status();
                std::thread::sleep(std::time::Duration::from_millis(100));
                std::fs::read(&self.path)
                    .is_ok_and(|b| b.windows(END_MARK.len()).any(|w| w == END_MARK))
            },
            "the capture's end mark",
        );
        self.interrupt();
        self.path.clone()
    }

    fn interrupt(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.interrupt();
    }
}

fn dissector() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/wireshark/natter.lua")
}

/// `tshark -r capture` with the dissector and `extra` arguments; its stdout.
fn tshark(capture: &Path, extra: &[&str]) -> String {
    let out = Command::new("tshark")
        .arg("-X")
        .arg(format!("lua_script:{}", dissector().display()))
        .arg("-r")
        .arg(capture)
        .args(["-o", "udp.try_heuristic_first:TRUE"])
        .args(extra)
        .output()
        .expect("tshark is needed: run scripts/deps");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tshark failed: {stderr}");
    // A Lua error in the dissector is reported on stderr, not as a failure.
    assert!(
        !stderr.contains("Lua") && !stderr.contains("lua_script"),
        "the dissector failed to load or run: {stderr}"
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One row per packet of `tshark -T fields` with these fields (tab-separated).
fn fields(capture: &Path, filter: &str, names: &[&str], extra: &[&str]) -> Vec<Vec<String>> {
    let mut args: Vec<&str> = vec!["-Y", filter, "-T", "fields", "-E", "occurrence=a"];
    args.extend(extra);
    for name in names {
        args.push("-e");
        args.push(name);
    }
    tshark(capture, &args)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// A decrypted datagram of natter-decrypt's listing.
struct Clear {
    direction: String,
    index: u64,
    function: String,
    plaintext: Vec<u8>,
}

fn read_listing(path: &Path) -> BTreeMap<u64, Clear> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut rows = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(' ').collect();
        rows.insert(
            f[0].parse().unwrap(),
            Clear {
                direction: f[4].to_owned(),
                index: f[5].parse().unwrap(),
                function: f[6].to_owned(),
                plaintext: hex::decode(f[7]).unwrap(),
            },
        );
    }
    rows
}

fn som_code(function: &str) -> u8 {
    match function {
        "Ping" => 0x02,
        "Connect" => 0x03,
        "Probe" => 0x07,
        "Data" => 0x0d,
        "ProbeReply" => 0x0f,
        other => panic!("function {other}"),
    }
}

fn parse_u8(text: &str) -> u8 {
    let text = text.trim_start_matches("0x");
    u8::from_str_radix(text, 16).unwrap()
}

/// A call of `secs` seconds (speech from the caller, or silence) between
/// two real clients that log their keys, captured on the loopback of a
/// namespace of its own; `udp_blocked`: behind a firewall letting only TCP
/// out (Cluster::block_client_udp).
struct Captured {
    work: tempfile::TempDir,
    call: common::call::Call,
    pcap: PathBuf,
    keylog: PathBuf,
    // Last: dropped after the capture stopped.
    _cluster: Cluster,
}

fn captured_call(tag: &str, udp_blocked: bool, speak: bool, secs: u32) -> Captured {
    let ns = Netns::new(tag, 0);
    let work = tempfile::tempdir().unwrap();
    let capture = Capture::start(&ns, &work.path().join("call.pcap"));
    let mut cluster = Cluster::start(2, Some(ns));
    if udp_blocked {
        cluster.block_client_udp();
        // Let the capture's end mark through the firewall.
        let ns_name = cluster.netns.as_ref().unwrap().name.clone();
        let status = Command::new("ip")
            .args(["netns", "exec", &ns_name, "nft", "insert", "rule", "inet"])
            .args(["fw", "out", "udp", "dport", "9", "accept"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let keylog = work.path().join("keys.log");
    cluster
        .natter_env
        .push(("NATTER_KEYLOG".into(), keylog.clone()));
    cluster.add_user("alice");
    cluster.add_user("bob");
    let speech = speak.then(|| speech(cluster.dir.path()));
    let call = call(&cluster, speech.as_deref(), secs, |_| {});
    let pcap = capture.stop();
    Captured {
        work,
        call,
        pcap,
        keylog,
        _cluster: cluster,
    }
}

/// A direct call on loopback, captured: tshark with the dissector names
/// every UDP datagram as QUIC or Natter (STUN, relay binds and replies, SoM
/// datagrams with a function), finds nothing malformed; with the key log,
/// natter-decrypt opens every voice datagram the dissector shows, their
/// frame numbers run without gaps, there are as many as each side's report
/// says it sent, and the dissector shows their frame numbers and Opus TOC
/// from natter-decrypt's listing; the key log's TLS lines open the QUIC,
/// whose envelopes the dissector names.
#[test]
fn a_captured_call_is_named_by_the_dissector_and_opened_with_the_key_log() {
    let Captured {
        work,
        call: c,
        pcap,
        keylog,
        _cluster,
    } = captured_call("traffic", false, true, 4);

    // Key logging was announced, and the file is private.
    for out in [&c.caller, &c.callee] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("NATTER_KEYLOG is set"), "{stderr}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keylog).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let log = std::fs::read_to_string(&keylog).unwrap();
    let call_lines = log
        .lines()
        .filter(|l| l.starts_with("NATTER_CALL "))
        .count();
    assert_eq!(call_lines, 4, "two directions from each end: {log}");
    assert!(log.contains("CLIENT_TRAFFIC_SECRET_0 "), "{log}");

    // Every UDP datagram (but the end mark) is QUIC or Natter, nothing is
    // malformed.
    let udp = fields(
        &pcap,
        "udp && !icmp && udp.port != 9",
        &[
            "frame.number",
            "frame.protocols",
            "natter.kind",
            "natter.som.function",
        ],
        &[],
    );
    assert!(!udp.is_empty());
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut som_functions: BTreeMap<u64, u8> = BTreeMap::new();
    for row in &udp {
        let protocols = &row[1];
        let kind = row[2].clone();
        assert!(
            protocols.contains(":quic") || protocols.contains(":natter"),
            "frame {} is neither QUIC nor Natter: {protocols}",
            row[0]
        );
        if kind == "stun" {
            assert!(protocols.contains(":stun"), "{row:?}");
        }
        if kind == "som" {
            assert!(
                !row[3].is_empty(),
                "SoM datagram without a function: {row:?}"
            );
            som_functions.insert(row[0].parse().unwrap(), parse_u8(&row[3]));
        }
        *kinds.entry(kind).or_default() += 1;
    }
    for kind in ["stun", "relay", "som"] {
        assert!(kinds.contains_key(kind), "no {kind} datagram: {kinds:?}");
    }
    let malformed = tshark(
        &pcap,
        &[
            "-Y",
            "_ws.malformed || natter.malformed || natter.unknown_function",
        ],
    );
    assert!(malformed.is_empty(), "malformed packets: {malformed}");
    let binds = fields(&pcap, "natter.relay.bind", &["natter.relay.status"], &[]);
    assert!(binds.iter().any(|r| r[0] == "0x80"), "no relay bind");
    assert!(binds.iter().any(|r| r[0] == "0x00"), "no bound reply");

    // natter-decrypt opens every SoM datagram the dissector shows.
    let listing = work.path().join("call.clear");
    let out = Command::new(workspace_bin("natter-decrypt"))
        .arg("--keylog")
        .arg(&keylog)
        .arg("--out")
        .arg(&listing)
        .arg(&pcap)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stderr).into_owned();
    if std::env::var_os("NATTER_KEEP_CAPTURE").is_some() {
        eprintln!("kept {}\n{summary}", work.keep().display());
        return;
    }
    let clear = read_listing(&listing);
    // The same capture as pcapng (editcap comes with tshark) gives the same listing.
    let pcapng = work.path().join("call.pcapng");
    let status = Command::new("editcap")
        .args(["-F", "pcapng"])
        .arg(&pcap)
        .arg(&pcapng)
        .status()
        .expect("editcap is needed: run scripts/deps");
    assert!(status.success());
    let out = Command::new(workspace_bin("natter-decrypt"))
        .arg("--keylog")
        .arg(&keylog)
        .arg(&pcapng)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        std::fs::read_to_string(&listing).unwrap(),
        "pcapng and pcap listings differ"
    );
    let opened: BTreeSet<u64> = clear.keys().copied().collect();
    let shown: BTreeSet<u64> = som_functions.keys().copied().collect();
    assert_eq!(opened, shown, "SoM datagrams shown but not opened, or back");
    for (frame, row) in &clear {
        assert_eq!(
            som_code(&row.function),
            som_functions[frame],
            "frame {frame}"
        );
    }

    // Per direction: the voice frames run without gaps, one per datagram
    // the sender's report counts (a relayed datagram is captured twice).
    let mut frames: BTreeMap<&str, BTreeMap<u64, u16>> = BTreeMap::new();
    for row in clear.values().filter(|r| r.function == "Data") {
        let number = u16::from_be_bytes([row.plaintext[0], row.plaintext[1]]);
        let seen = frames
            .entry(row.direction.as_str())
            .or_default()
            .insert(row.index, number);
        assert!(seen.is_none_or(|n| n == number), "index {}", row.index);
    }
    for (direction, json) in [("c2s", &c.caller_json), ("s2c", &c.callee_json)] {
        let numbers: BTreeSet<u16> = frames[direction].values().copied().collect();
        assert_eq!(numbers.len(), frames[direction].len(), "{direction}");
        let (first, last) = (*numbers.first().unwrap(), *numbers.last().unwrap());
        assert_eq!(
            usize::from(last - first) + 1,
            numbers.len(),
            "{direction}: frame numbers {first}..={last} have gaps"
        );
        assert_eq!(
            numbers.len() as f64,
            field(json, "media_packets_sent"),
            "{direction}"
        );
    }

    // The dissector shows the plaintext from the listing: frame number and
    // Opus TOC of every voice frame, the clock of probes.
    let clear_pref = format!("natter.clear_file:{}", listing.display());
    let voice = fields(
        &pcap,
        "natter.som.function == 0x0d",
        &[
            "frame.number",
            "natter.clear.frame_number",
            "natter.clear.opus.toc",
        ],
        &["-o", &clear_pref],
    );
    assert_eq!(
        voice.len(),
        clear.values().filter(|r| r.function == "Data").count()
    );
    for row in &voice {
        let c = &clear[&row[0].parse::<u64>().unwrap()];
        let number = u16::from_be_bytes([c.plaintext[0], c.plaintext[1]]);
        assert_eq!(row[1], number.to_string(), "{row:?}");
        assert_eq!(parse_u8(&row[2]), c.plaintext[2], "{row:?}");
    }
    let probes = fields(
        &pcap,
        "natter.som.function == 0x07",
        &["frame.number", "natter.clear.clock_ms"],
        &["-o", &clear_pref],
    );
    assert!(!probes.is_empty());
    for row in &probes {
        let c = &clear[&row[0].parse::<u64>().unwrap()];
        let clock = u64::from_be_bytes(c.plaintext.as_slice().try_into().unwrap());
        assert_eq!(row[1], clock.to_string(), "{row:?}");
    }

    // The TLS secrets in the same file open the clients' QUIC, and the
    // dissector names the envelopes in its streams: register, login, join,
    // call signals; still nothing malformed.
    let keylog_pref = format!("tls.keylog_file:{}", keylog.display());
    let messages: BTreeSet<String> = fields(
        &pcap,
        "natter.frame.length",
        &["natter.envelope.type"],
        &["-o", &keylog_pref],
    )
    .iter()
    .flat_map(|row| row[0].split(',').map(str::to_owned).collect::<Vec<_>>())
    .collect();
    for message in ["10", "12", "20", "21", "22", "40", "41", "42"] {
        assert!(
            messages.contains(message),
            "no message type {message}: {messages:?}"
        );
    }
    let malformed = tshark(
        &pcap,
        &[
            "-o",
            &keylog_pref,
            "-Y",
            "_ws.malformed || natter.malformed",
        ],
    );
    assert!(
        malformed.is_empty(),
        "malformed with the key log: {malformed}"
    );
}

/// Both users behind a firewall that lets only TCP out: with the key log's
/// TLS lines Wireshark opens the clients' TLS connections and the dissector
/// names every record in them: envelopes by message type (the join, the
/// call signals), DATAGRAM records carrying relay binds and SoM datagrams
/// (voice at 50 a second), keepalives; nothing malformed, and every TLS
/// record of application data in the capture is opened and Natter's.
#[test]
fn a_udp_blocked_call_is_named_record_by_record_inside_tls_with_the_key_log() {
    let Captured {
        work,
        call: c,
        pcap,
        keylog,
        _cluster,
    } = captured_call("traffictcp", true, false, 3);
    if std::env::var_os("NATTER_KEEP_CAPTURE").is_some() {
        eprintln!("kept {}", work.keep().display());
        return;
    }
    let keylog_pref = format!("tls.keylog_file:{}", keylog.display());
    let keys = ["-o", keylog_pref.as_str()];
    let malformed = tshark(
        &pcap,
        &[
            "-o",
            &keylog_pref,
            "-Y",
            "_ws.malformed || natter.malformed || natter.unknown_function",
        ],
    );
    assert!(malformed.is_empty(), "malformed packets: {malformed}");
    let records = fields(
        &pcap,
        "natter.rec.kind",
        &[
            "frame.number",
            "natter.rec.kind",
            "natter.envelope.type",
            "natter.som.function",
            "natter.relay.status",
        ],
        &keys,
    );
    let mut kinds = BTreeSet::new();
    let mut messages = BTreeSet::new();
    let mut som = BTreeMap::<u8, usize>::new();
    let mut relay = BTreeSet::new();
    for row in &records {
        kinds.extend(row[1].split(',').map(parse_u8));
        messages.extend(
            row[2]
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        );
        for f in row[3].split(',').filter(|t| !t.is_empty()) {
            *som.entry(parse_u8(f)).or_default() += 1;
        }
        relay.extend(row[4].split(',').filter(|t| !t.is_empty()).map(parse_u8));
    }
    assert!(kinds.contains(&0x01) && kinds.contains(&0x02), "{kinds:?}");
    for message in ["20", "23", "40", "41", "42"] {
        assert!(
            messages.contains(message),
            "no message type {message}: {messages:?}"
        );
    }
    assert!(relay.contains(&0x80) && relay.contains(&0x00), "{relay:?}");
    // Voice both ways (function 0x0d), at least what the reports sent.
    let sent =
        field(&c.caller_json, "media_packets_sent") + field(&c.callee_json, "media_packets_sent");
    assert!(
        som.get(&0x0d).copied().unwrap_or(0) as f64 >= sent,
        "{som:?} for {sent} sent"
    );
    // Every record of application data was opened and is Natter's.
    let app = fields(
        &pcap,
        "tls.record.content_type == 23",
        &["frame.number", "frame.protocols"],
        &keys,
    );
    assert!(!app.is_empty());
    let unopened: Vec<_> = app.iter().filter(|r| !r[1].contains("natter")).collect();
    assert!(unopened.is_empty(), "{unopened:?}");
}
