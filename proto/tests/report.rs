//! The typed call report writes the same bytes the untyped writer did
//! (users and the NAT lab read `--stats-json`), and reads back what it wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// serde_json::json! of the whole report nests deeper than the default 128.
#![recursion_limit = "256"]

use std::net::SocketAddr;

use natter_proto::path::PathKind;
use natter_proto::report::{CallReport, SwitchReport};

/// The writer the client used before the report was typed
/// (`client/src/call.rs`, `CallReport::to_json`, `serde_json::json!`).
fn legacy_json(r: &CallReport, sent_bytes: u64, received_bytes: u64, sent_packets: u64) -> String {
    let secs = r.duration_s.max(0.001);
    let mean_payload = if sent_packets == 0 {
        0.0
    } else {
        sent_bytes as f64 / sent_packets as f64
    };
    let switches: Vec<_> = r
        .switches
        .iter()
        .map(|s| serde_json::json!({"at_ms": s.at_ms, "path": s.path.name(), "addr": s.addr.to_string()}))
        .collect();
    serde_json::json!({
        "peer": r.peer,
        "path": r.path_end.map_or("none", PathKind::name),
        "path_start": r.path_start.map(PathKind::name),
        "path_end": r.path_end.map(PathKind::name),
        "switches": switches,
        "time_to_direct_ms": r.time_to_direct_ms,
        "remote_addr": r.remote_addr.map(|a| a.to_string()),
        "duration_s": (r.duration_s * 1000.0).round() / 1000.0,
        "setup_ms": r.setup_ms,
        "first_audio_ms": r.first_audio_ms,
        "ended_by_peer": r.ended_by_peer,
        "rtt_ms": r.rtt_ms,
        "jitter_ms": (r.jitter_ms * 100.0).round() / 100.0,
        "packets_sent": r.packets_sent,
        "packets_received": r.packets_received,
        "media_packets_sent": r.media_packets_sent,
        "media_packets_received": r.media_packets_received,
        "packets_lost": r.packets_lost,
        "packets_late": r.packets_late,
        "duplicates": r.duplicates,
        "fec_recoveries": r.fec_recoveries,
        "concealed_frames": r.concealed_frames,
        "dropped_auth": r.dropped_auth,
        "dropped_replay": r.dropped_replay,
        "dropped_malformed": r.dropped_malformed,
        "jitter_buffer_delay_ms": r.jitter_buffer_delay_ms,
        // Added with the jitter-buffer tuning (issue 16, item 5).
        "jb_added_delay_p50_ms": r.jb_added_delay_p50_ms,
        "jb_added_delay_p95_ms": r.jb_added_delay_p95_ms,
        "late_loss_pct": (r.late_loss_pct * 100.0).round() / 100.0,
        "send_bytes_per_s": (sent_bytes as f64 / secs * 10.0).round() / 10.0,
        "recv_bytes_per_s": (received_bytes as f64 / secs * 10.0).round() / 10.0,
        "mean_udp_payload": (mean_payload * 100.0).round() / 100.0,
        "codec_bitrate": r.codec_bitrate,
        // Added with the E-model (issue 16).
        "mos_estimate": (r.mos_estimate * 100.0).round() / 100.0,
        "mouth_to_ear_ms": (r.mouth_to_ear_ms * 10.0).round() / 10.0,
        "signaling": r.signaling,
        "path_rtt_ms": r.path_rtt_ms,
        "tcp_connects": r.tcp_connects,
        "tcp_dropped": r.tcp_dropped,
        "ignored_signals": r.ignored_signals,
        // Added with the per-second time series (issue 21); empty here.
        "samples": [],
        // Added with port prediction and hold on the wire (issue 17).
        "predicted_candidates": r.predicted_candidates.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "held_frames": r.held_frames,
        "peer_holds": r.peer_holds,
        "peer_held_ms": r.peer_held_ms,
        // Added with relay migration and rejoining mid-call (issue 18).
        "max_media_gap_ms": r.max_media_gap_ms,
        "relay_migrations": r.relay_migrations,
        "rejoins": r.rejoins,
    })
    .to_string()
}

/// A report as the client builds it from its counters.
fn report(
    end: Option<PathKind>,
    duration_s: f64,
    sent_bytes: u64,
    received_bytes: u64,
    sent_packets: u64,
) -> CallReport {
    let addr: SocketAddr = "[2001:db8::7]:443".parse().unwrap();
    let secs = duration_s.max(0.001);
    CallReport {
        peer: "bob".into(),
        path: end,
        path_start: end.map(|_| PathKind::Relayed),
        path_end: end,
        switches: end
            .map(|kind| {
                vec![
                    SwitchReport {
                        at_ms: 0,
                        path: PathKind::Relayed,
                        addr: "198.51.100.20:3478".parse().unwrap(),
                    },
                    SwitchReport {
                        at_ms: 6_140,
                        path: kind,
                        addr,
                    },
                ]
            })
            .unwrap_or_default(),
        time_to_direct_ms: end.filter(|k| !k.is_relayed()).map(|_| 880),
        remote_addr: end.map(|_| addr),
        duration_s,
        setup_ms: 412,
        first_audio_ms: end.map(|_| 530),
        ended_by_peer: end.is_none(),
        rtt_ms: end.map(|_| 23),
        jitter_ms: 1.23456,
        packets_sent: sent_packets,
        packets_received: 497,
        media_packets_sent: sent_packets.saturating_sub(7),
        media_packets_received: 490,
        packets_lost: 3,
        packets_late: 1,
        duplicates: 0,
        fec_recoveries: 2,
        concealed_frames: 1,
        dropped_auth: 4,
        dropped_replay: 0,
        dropped_malformed: 2,
        jitter_buffer_delay_ms: 60,
        jb_added_delay_p50_ms: end.map(|_| 31),
        jb_added_delay_p95_ms: end.map(|_| 58),
        late_loss_pct: 0.204_08,
        send_bytes_per_s: sent_bytes as f64 / secs,
        recv_bytes_per_s: received_bytes as f64 / secs,
        mean_udp_payload: if sent_packets == 0 {
            0.0
        } else {
            sent_bytes as f64 / sent_packets as f64
        },
        codec_bitrate: 16_000,
        mos_estimate: 3.876_54,
        mouth_to_ear_ms: 102.25,
        signaling: "quic".into(),
        path_rtt_ms: end.map(|_| 31),
        tcp_connects: 1,
        tcp_dropped: 0,
        ignored_signals: 1,
        samples: Vec::new(),
        predicted_candidates: vec!["203.0.113.2:20003".parse().unwrap()],
        held_frames: vec![[100, 150]],
        peer_holds: 1,
        peer_held_ms: 2_020,
        max_media_gap_ms: 1_240,
        relay_migrations: 1,
        rejoins: 1,
    }
}

#[test]
fn the_typed_report_writes_the_bytes_the_untyped_writer_did() {
    let cases = [
        (Some(PathKind::HolePunched), 10.0456, 30_551, 29_877, 503),
        (Some(PathKind::TcpRelay), 7.3339, 22_871, 21_000, 371),
        (Some(PathKind::Direct), 0.0, 0, 0, 0),
        (None, 3.1, 1_234, 0, 17),
    ];
    for (end, secs, sent, received, packets) in cases {
        let r = report(end, secs, sent, received, packets);
        let json = r.to_json();
        assert_eq!(json, legacy_json(&r, sent, received, packets));
        assert!(
            json.starts_with("{\"codec_bitrate\":16000,\"concealed_frames\":1,"),
            "{json}"
        );
        assert!(!json.contains('\n'), "one line");
    }
}

#[test]
fn a_report_reads_back_as_written_up_to_the_rounding() {
    let r = report(Some(PathKind::TcpRelay), 7.3339, 22_871, 21_000, 371);
    let back = CallReport::from_json(&r.to_json()).unwrap();
    assert_eq!(back.path, Some(PathKind::TcpRelay));
    assert_eq!(back.path_start, Some(PathKind::Relayed));
    assert_eq!(back.switches, r.switches);
    assert_eq!(back.remote_addr, r.remote_addr);
    assert_eq!(back.duration_s, 7.334);
    assert_eq!(back.jitter_ms, 1.23);
    assert_eq!(back.send_bytes_per_s, 3118.5);
    assert_eq!(back.media_packets_received, 490);
    assert_eq!(back.mos_estimate, 3.88);
    assert_eq!(back.mouth_to_ear_ms, 102.3);
    // A report from before the E-model (no MOS keys) still reads, as 0.
    let old = r
        .to_json()
        .replace("\"mos_estimate\":3.88,", "")
        .replace("\"mouth_to_ear_ms\":102.3,", "");
    assert!(!old.contains("mos"), "{old}");
    assert_eq!(CallReport::from_json(&old).unwrap().mos_estimate, 0.0);
    // A report without a path says "none", and reads back as no path.
    let none = report(None, 3.1, 1_234, 0, 17);
    assert!(none.to_json().contains("\"path\":\"none\""));
    assert_eq!(CallReport::from_json(&none.to_json()).unwrap().path, None);
    // An unknown path name is an error, not a silent default.
    let bad = r
        .to_json()
        .replace("\"path\":\"tcp-relay\"", "\"path\":\"carrier-pigeon\"");
    assert!(CallReport::from_json(&bad).is_err());
}

#[test]
fn path_names_and_ranks_are_one_table() {
    let all = [
        PathKind::Direct,
        PathKind::HolePunched,
        PathKind::Relayed,
        PathKind::TcpRelay,
    ];
    for (i, kind) in all.into_iter().enumerate() {
        assert_eq!(usize::from(kind.rank()), i);
        assert_eq!(PathKind::from_name(kind.name()), Some(kind));
        assert_eq!(
            serde_json::to_string(&kind).unwrap(),
            format!("\"{}\"", kind.name())
        );
    }
    assert!(all.windows(2).all(|w| w[0] < w[1]), "Ord follows the rank");
    assert_eq!(PathKind::from_name("none"), None);
}
