//! The report of one call, as the client writes it (`--stats-json`) and the
//! NAT lab reads it back: one typed definition for both.
//!
//! The JSON is one flat object with its keys in alphabetical order (what
//! users and the lab have read since the first release); rates and means
//! are rounded when written, the struct keeps the exact values.

use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::path::{PathKind, Switch};

/// One change of path in a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchReport {
    /// Milliseconds since media started.
    pub at_ms: u64,
    /// The path media moved to.
    pub path: PathKind,
    /// Where it goes (the peer, a relay, or a supernode's TLS listener;
    /// `0.0.0.0:0` when a report does not say).
    #[serde(default = "unspecified")]
    pub addr: SocketAddr,
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

impl From<&Switch> for SwitchReport {
    fn from(s: &Switch) -> Self {
        SwitchReport {
            at_ms: s.at_ms,
            path: s.kind,
            addr: s.to.addr(),
        }
    }
}

/// One point of a call's time series: the state at `at_ms`, counters
/// cumulative since media started (a plot takes differences).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sample {
    /// Milliseconds since media started.
    pub at_ms: u64,
    /// RTT of the last probe reply by then.
    pub rtt_ms: Option<u64>,
    /// Interarrival jitter (written to 0.01 ms).
    #[serde(serialize_with = "round2")]
    pub jitter_ms: f64,
    /// Media packets received so far.
    pub received: u64,
    /// Media packets lost so far (never arrived in time).
    pub lost: u64,
    /// Frames recovered by FEC so far.
    pub fec_recoveries: u64,
    /// Frames concealed so far.
    pub concealed: u64,
}

/// A bounded time series of [`Sample`]s: one every `interval_ms` (1 s to
/// start with); when `max` are held, every other one is dropped and the
/// interval doubles, so a call of any length keeps at most `max` samples
/// spread over all of it. Sans-IO: the caller says the time.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSeries {
    samples: Vec<Sample>,
    interval_ms: u64,
    max: usize,
    next_ms: u64,
}

impl SampleSeries {
    /// The default bound: an hour of one-second samples.
    pub const MAX: usize = 3600;

    /// A series sampling every `interval_ms`, at most `max` (at least 2) kept.
    pub fn new(interval_ms: u64, max: usize) -> Self {
        Self {
            samples: Vec::new(),
            interval_ms: interval_ms.max(1),
            max: max.max(2),
            next_ms: interval_ms.max(1),
        }
    }

    /// Whether a sample is due at `now_ms` (then [`Self::push`] one).
    pub fn due(&self, now_ms: u64) -> bool {
        now_ms >= self.next_ms
    }

    /// Records `sample` (taken at `sample.at_ms`).
    pub fn push(&mut self, sample: Sample) {
        self.samples.push(sample);
        if self.samples.len() > self.max {
            // Keep the newest and every other one before it.
            let n = self.samples.len();
            let mut i = 0;
            self.samples.retain(|_| {
                let keep = (n - 1 - i).is_multiple_of(2);
                i += 1;
                keep
            });
            self.interval_ms = self.interval_ms.saturating_mul(2);
        }
        self.next_ms = sample.at_ms.saturating_add(self.interval_ms);
    }

    /// The interval between samples now.
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    pub fn into_samples(self) -> Vec<Sample> {
        self.samples
    }
}

impl Default for SampleSeries {
    fn default() -> Self {
        Self::new(1000, Self::MAX)
    }
}

/// The report of one call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CallReport {
    pub peer: String,
    /// The path media last went over (`"none"` in JSON when there was none).
    #[serde(with = "path_or_none")]
    pub path: Option<PathKind>,
    /// The path of the first media frame.
    pub path_start: Option<PathKind>,
    /// The path of the last media frame.
    pub path_end: Option<PathKind>,
    /// Every change of path, in ms since media started.
    pub switches: Vec<SwitchReport>,
    /// When a direct or hole-punched path was first confirmed.
    pub time_to_direct_ms: Option<u64>,
    /// Where the last media frame went.
    pub remote_addr: Option<SocketAddr>,
    /// Seconds of media (written to the millisecond).
    #[serde(serialize_with = "round3")]
    pub duration_s: f64,
    pub setup_ms: u64,
    pub first_audio_ms: Option<u64>,
    pub ended_by_peer: bool,
    /// RTT of the last probe reply.
    pub rtt_ms: Option<u64>,
    /// Interarrival jitter (written to 0.01 ms).
    #[serde(serialize_with = "round2")]
    pub jitter_ms: f64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub media_packets_sent: u64,
    pub media_packets_received: u64,
    pub packets_lost: u64,
    pub packets_late: u64,
    pub duplicates: u64,
    pub fec_recoveries: u64,
    pub concealed_frames: u64,
    pub dropped_auth: u64,
    pub dropped_replay: u64,
    pub dropped_malformed: u64,
    pub jitter_buffer_delay_ms: u32,
    /// Median of the delay the jitter buffer added to the frames it played
    /// (playout time minus arrival), ms.
    pub jb_added_delay_p50_ms: Option<u32>,
    /// 95th percentile of that delay, ms.
    pub jb_added_delay_p95_ms: Option<u32>,
    /// Frames that came after their playout time, percent of the frames
    /// that came (written to 0.01).
    #[serde(serialize_with = "round2")]
    pub late_loss_pct: f64,
    /// Written to 0.1 B/s.
    #[serde(serialize_with = "round1")]
    pub send_bytes_per_s: f64,
    #[serde(serialize_with = "round1")]
    pub recv_bytes_per_s: f64,
    /// Mean UDP payload of what this side sent, in bytes (written to 0.01).
    #[serde(serialize_with = "round2")]
    pub mean_udp_payload: f64,
    pub codec_bitrate: i32,
    /// Estimated MOS of what this side heard (ITU-T G.107 E-model from the
    /// loss, its burstiness and the delay; natter-media's `emodel`), 1..4.5;
    /// 0 when nothing was heard (written to 0.01).
    #[serde(serialize_with = "round2")]
    pub mos_estimate: f64,
    /// Estimated one-way mouth-to-ear delay the MOS assumes: one frame +
    /// Opus look-ahead + half the RTT + the jitter buffer; sound cards not
    /// included (written to 0.1 ms).
    #[serde(serialize_with = "round1")]
    pub mouth_to_ear_ms: f64,
    /// Transport of the supernode session (`quic` or `tcp`).
    pub signaling: String,
    /// RTT of the path media last went over (connectivity-check probes).
    pub path_rtt_ms: Option<u64>,
    /// TLS relay legs connected (reconnections included).
    pub tcp_connects: u64,
    /// Datagrams dropped on full TLS leg queues.
    pub tcp_dropped: u64,
    /// Call signals dropped: not from the peer, or mid-call without the
    /// call's MAC (protocol section 3.2).
    pub ignored_signals: u64,
    /// The call over time ([`SampleSeries`]: one sample a second, at most
    /// [`SampleSeries::MAX`]); empty in reports of older clients.
    pub samples: Vec<Sample>,
    /// The predicted candidates this side sent the peer (its NAT mapped
    /// two STUN bindings to ports one small step apart: the next steps).
    pub predicted_candidates: Vec<SocketAddr>,
    /// This side's holds: for each, the numbers of the first voice frame
    /// sent on hold and of the first one after it (the frame counter at the
    /// resume, or at the end of the call). Frames were sent all the same
    /// (silence, 50 a second).
    pub held_frames: Vec<[u64; 2]>,
    /// Times the peer put the call on hold (its MACed `hold` signals).
    pub peer_holds: u64,
    /// How long the peer had the call on hold, in all.
    pub peer_held_ms: u64,
    /// The longest time between two media datagrams received, ms: the
    /// worst audio gap (a relay migration's included); 0 in reports of
    /// older clients.
    pub max_media_gap_ms: u64,
    /// Relay migrations the call session asked for (every path had died:
    /// `natter_proto::migration`).
    pub relay_migrations: u32,
    /// Supernodes rejoined during the call (the one signaling went through
    /// was lost).
    pub rejoins: u32,
}

fn rounded<S: serde::Serializer>(v: f64, scale: f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((v * scale).round() / scale)
}

fn round1<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    rounded(*v, 10.0, s)
}

fn round2<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    rounded(*v, 100.0, s)
}

fn round3<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    rounded(*v, 1000.0, s)
}

/// A path written as its name, or `"none"`.
mod path_or_none {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::path::PathKind;

    pub fn serialize<S: Serializer>(p: &Option<PathKind>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.map_or("none", PathKind::name))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathKind>, D::Error> {
        let name = String::deserialize(d)?;
        if name == "none" {
            return Ok(None);
        }
        PathKind::from_name(&name)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown path {name:?}")))
    }
}

impl CallReport {
    /// The name of the path at the end of the call (`none` without one).
    pub fn path_name(&self) -> &'static str {
        self.path.map_or("none", PathKind::name)
    }

    /// The report as JSON (the `--stats-json` file): one line, keys in
    /// alphabetical order (serialized through a `serde_json::Value`, whose
    /// map is ordered), rates and means rounded.
    pub fn to_json(&self) -> String {
        // Serializing this struct cannot fail: no maps, no fallible fields.
        serde_json::to_value(self).map_or_else(|_| "{}".to_owned(), |v| v.to_string())
    }

    /// Reads a report back (missing keys take their defaults).
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// A human-readable report.
    pub fn to_text(&self) -> String {
        let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} ms"));
        let mut s = String::new();
        let _ = write!(
            s,
            "call with {peer}: {dur:.1} s, path {path} ({remote}, RTT {prtt}), signaling over {sig}, setup {setup} ms, first audio {first}\n\
             sent {sp} packets ({smp} media, mean UDP payload {mp:.1} B, {sbps:.0} B/s), received {rp} ({rmp} media)\n\
             lost {lost} (FEC recovered {fec}, concealed {conc}), late {late}, dropped: auth {auth}, replay {rep}, malformed {mal}, signals {sig_ign}\n\
             RTT {rtt}, jitter {jit:.1} ms, jitter-buffer delay {jbd} ms (added p50 {jb50}, p95 {jb95}, late loss {ll:.2} %), codec Opus {br} b/s\n\
             estimated MOS {mos} (E-model, mouth-to-ear {m2e:.0} ms){holds}",
            peer = self.peer,
            dur = self.duration_s,
            path = self.path_name(),
            remote = self.remote_addr.map_or("-".into(), |a| a.to_string()),
            prtt = ms(self.path_rtt_ms),
            sig = self.signaling,
            setup = self.setup_ms,
            first = ms(self.first_audio_ms),
            sp = self.packets_sent,
            smp = self.media_packets_sent,
            mp = self.mean_udp_payload,
            sbps = self.send_bytes_per_s,
            rp = self.packets_received,
            rmp = self.media_packets_received,
            lost = self.packets_lost,
            fec = self.fec_recoveries,
            conc = self.concealed_frames,
            late = self.packets_late,
            auth = self.dropped_auth,
            rep = self.dropped_replay,
            mal = self.dropped_malformed,
            sig_ign = self.ignored_signals,
            rtt = ms(self.rtt_ms),
            jit = self.jitter_ms,
            jbd = self.jitter_buffer_delay_ms,
            jb50 = ms(self.jb_added_delay_p50_ms.map(u64::from)),
            jb95 = ms(self.jb_added_delay_p95_ms.map(u64::from)),
            ll = self.late_loss_pct,
            br = self.codec_bitrate,
            mos = if self.mos_estimate > 0.0 {
                format!("{:.2}", self.mos_estimate)
            } else {
                "- (nothing heard)".to_owned()
            },
            m2e = self.mouth_to_ear_ms,
            holds = if self.held_frames.is_empty() && self.peer_holds == 0 {
                String::new()
            } else {
                format!(
                    "\non hold {} times; on hold by peer {} times ({:.1} s)",
                    self.held_frames.len(),
                    self.peer_holds,
                    self.peer_held_ms as f64 / 1000.0
                )
            },
        );
        if self.relay_migrations > 0 || self.rejoins > 0 {
            let _ = write!(
                s,
                "\nrelay migrations asked {}, supernodes rejoined {}, longest media gap {} ms",
                self.relay_migrations, self.rejoins, self.max_media_gap_ms
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Sample {
        Sample {
            at_ms: ms,
            received: ms / 20,
            ..Sample::default()
        }
    }

    #[test]
    fn the_series_is_bounded_and_spans_the_call() {
        let mut series = SampleSeries::new(1000, 10);
        let mut taken = 0;
        for now in (0..=100_000).step_by(20) {
            if series.due(now) {
                series.push(at(now));
                taken += 1;
            }
        }
        assert!(series.samples().len() <= 10);
        assert!(series.samples().len() >= 5, "{:?}", series.samples());
        assert!(taken > 10);
        // Oldest first, spread over the whole call.
        let times: Vec<u64> = series.samples().iter().map(|s| s.at_ms).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
        assert!(times[0] <= 20_000, "{times:?}");
        assert!(
            *times.last().unwrap() >= 100_000 - 2 * series.interval_ms(),
            "{times:?}"
        );
        assert!(series.interval_ms() >= 8000);
    }

    #[test]
    fn samples_round_trip_through_json() {
        let report = CallReport {
            peer: "bob".into(),
            samples: vec![
                Sample {
                    at_ms: 1000,
                    rtt_ms: Some(42),
                    jitter_ms: 1.234,
                    received: 50,
                    lost: 1,
                    fec_recoveries: 1,
                    concealed: 0,
                },
                Sample {
                    at_ms: 2000,
                    rtt_ms: None,
                    ..Sample::default()
                },
            ],
            ..CallReport::default()
        };
        let back = CallReport::from_json(&report.to_json()).unwrap();
        assert_eq!(back.samples.len(), 2);
        assert_eq!(back.samples[0].rtt_ms, Some(42));
        assert_eq!(back.samples[0].jitter_ms, 1.23);
        assert_eq!(back.samples[1].rtt_ms, None);
        // An older report without samples still reads.
        assert!(
            CallReport::from_json("{\"peer\":\"x\"}")
                .unwrap()
                .samples
                .is_empty()
        );
    }
}
