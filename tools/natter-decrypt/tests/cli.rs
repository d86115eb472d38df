//! The `natter-decrypt` binary end to end: a pcap written here with one
//! sealed voice frame among strangers' datagrams is opened with its key log
//! line, and every bad input is a clear error with a non-zero exit, never a
//! panic or an empty success.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use natter_proto::handshake::{DirectionKeys, IV_LEN, KEY_LEN};
use natter_proto::media::{Sealer, encode_media_frame};
use natter_proto::som::Function;
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

const CALL_ID: &str = "f0591d70bed789d7194f536f91c2cc35";

fn keys(byte: u8) -> DirectionKeys {
    DirectionKeys {
        key: [byte; KEY_LEN],
        iv: [byte ^ 0x5a; IV_LEN],
    }
}

fn key_line(direction: &str, k: &DirectionKeys, first: &str) -> String {
    format!(
        "NATTER_CALL {CALL_ID} {direction} {} {} {first}\n",
        hex::encode(k.key),
        hex::encode(k.iv)
    )
}

fn run(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_natter-decrypt"))
        .args(args)
        .output()
        .expect("natter-decrypt runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A raw-IP (LINKTYPE_RAW) pcap holding these UDP payloads, 127.0.0.1:4000
/// to 127.0.0.2:5000.
fn write_pcap(path: &Path, payloads: &[Vec<u8>]) {
    let header = PcapHeader {
        datalink: DataLink::RAW,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(std::fs::File::create(path).unwrap(), header).unwrap();
    for (n, payload) in payloads.iter().enumerate() {
        let builder =
            etherparse::PacketBuilder::ipv4([127, 0, 0, 1], [127, 0, 0, 2], 64).udp(4000, 5000);
        let mut packet = Vec::new();
        builder.write(&mut packet, payload).unwrap();
        let time = Duration::from_millis(20 * n as u64);
        writer
            .write_packet(&PcapPacket::new(time, packet.len() as u32, &packet))
            .unwrap();
    }
}

#[test]
fn a_sealed_voice_frame_in_a_pcap_is_listed_and_strangers_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let c2s = keys(1);
    let keylog = dir.path().join("keylog");
    std::fs::write(
        &keylog,
        format!("CLIENT_RANDOM 00 11\n{}", key_line("c2s", &c2s, "300")),
    )
    .unwrap();

    let mut sealer = Sealer::new(&c2s, 300);
    let mut plain = Vec::new();
    encode_media_frame(42, &[0x48, 9, 9, 9], &mut plain);
    let mut voice = Vec::new();
    sealer.seal(Function::Data, 3, &plain, &mut voice).unwrap();
    let mut stranger = Vec::new();
    Sealer::new(&keys(7), 300)
        .seal(Function::Data, 3, &plain, &mut stranger)
        .unwrap();
    let capture = dir.path().join("call.pcap");
    write_pcap(&capture, &[stranger, voice, b"NRLY garbage".to_vec()]);

    let listing = dir.path().join("listing.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_natter-decrypt"))
        .arg("--keylog")
        .arg(&keylog)
        .arg("--out")
        .arg(&listing)
        .arg(&capture)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&listing).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 1, "only the sealed frame opens: {text}");
    let line = lines[0];
    assert!(
        line.starts_with("2 127.0.0.1:4000 127.0.0.2:5000 "),
        "{line}"
    );
    assert!(line.contains(&format!("{CALL_ID} c2s 300 Data")), "{line}");
    assert!(
        line.contains("frame_number=42 opus_bytes=4 toc=0x48"),
        "{line}"
    );
    assert!(
        stderr(&out).contains(&format!("call {CALL_ID} c2s: Data 1, voice frames 42..=42")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good_log = dir.path().join("good.log");
    std::fs::write(&good_log, key_line("c2s", &keys(1), "-")).unwrap();
    let no_calls = dir.path().join("tls-only.log");
    std::fs::write(&no_calls, "CLIENT_RANDOM 00 11\n").unwrap();
    let bad_line = dir.path().join("bad.log");
    std::fs::write(
        &bad_line,
        format!(
            "{}NATTER_CALL {CALL_ID} up 00 00 -\n",
            key_line("c2s", &keys(1), "-")
        ),
    )
    .unwrap();
    let not_pcap = dir.path().join("notes.txt");
    std::fs::write(&not_pcap, "this is not a capture at all").unwrap();
    let short = dir.path().join("short.pcap");
    std::fs::write(&short, [0xd4, 0xc3]).unwrap();
    let missing = dir.path().join("missing");

    // No arguments: clap's usage, exit 2.
    let out = Command::new(env!("CARGO_BIN_EXE_natter-decrypt"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--keylog"), "{}", stderr(&out));

    let cases: [(&Path, &Path, &str); 5] = [
        (&missing, &not_pcap, "reading "),
        (&no_calls, &not_pcap, "has no NATTER_CALL lines"),
        (&bad_line, &not_pcap, "key log line 2: direction \"up\""),
        (&good_log, &missing, "opening "),
        (&good_log, &not_pcap, "wrong magic number"),
    ];
    for (log, capture, expected) in cases {
        let out = run(&[Path::new("--keylog"), log, capture]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{log:?} {capture:?}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(expected),
            "{log:?} {capture:?}: expected {expected:?} in {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    let out = run(&[Path::new("--keylog"), &good_log, &short]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("magic"), "{}", stderr(&out));
}
