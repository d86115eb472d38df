//! The audio half of the quality bench (`scripts/quality` scores it with
//! PESQ-WB): speech through
//!
//! * **natter**: Natter's voice path in memory ([`natter_media::loopback`]:
//!   encoder, sealing, opening, jitter buffer, decoder with its neural
//!   features), datagrams dropped by a loss trace;
//! * **reference**: libopus's plain path, as `opus_demo` runs it: an encoder
//!   at the same bitrate (CBR, wideband, in-band FEC, expected loss set to the
//!   trace's), a decoder at complexity 0 (no deep PLC, no OSCE) decoding the
//!   next packet's FEC for a lost frame when that packet arrived and
//!   concealing otherwise; same trace.
//!
//! Loss traces: random 0, 2, 5 and 10 %, and bursty (Gilbert-Elliott, 5 %
//! mean loss in bursts of 3 frames on average), each from a fixed seed.
//!
//! ```text
//! cargo run -p natter-media --example quality -- OUT_DIR SPEECH.wav...
//! ```
//!
//! Writes `OUT_DIR/<speech>.<case>.<path>.wav` (48 kHz mono) and prints one
//! tab-separated line per run: speech, case, path, file, frames, lost
//! frames, mean and largest voice datagram (UDP payload bytes; reference:
//! what the same packet would make sealed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use natter_media::codec::{CodecConfig, Decoder, Encoder, FRAME_SAMPLES, MAX_PACKET, packet_mode};
use natter_media::loopback::Loopback;
use natter_media::session::MediaConfig;
use natter_media::wav::{read_mono_48k, write_mono_48k};
use rand::{Rng, SeedableRng};

/// Voice datagram overhead: SoM header 3 + frame number 2 + GCM tag 16.
const OVERHEAD: usize = 21;

#[derive(Clone, Copy)]
enum Trace {
    Random(f64),
    /// Gilbert-Elliott: p (good -> bad), r (bad -> good); every frame lost
    /// in the bad state.
    Bursty {
        p: f64,
        r: f64,
    },
}

impl Trace {
    fn name(self) -> String {
        match self {
            Trace::Random(l) => format!("random{}", (l * 100.0).round()),
            Trace::Bursty { p, r } => {
                format!("ge{}", (100.0 * p / (p + r)).round())
            }
        }
    }

    /// Mean loss, percent.
    fn percent(self) -> f64 {
        match self {
            Trace::Random(l) => 100.0 * l,
            Trace::Bursty { p, r } => 100.0 * p / (p + r),
        }
    }

    /// Which of `n` frames are lost (fixed seed: the same for every path).
    fn losses(self, n: usize) -> Vec<bool> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
        let mut bad = false;
        (0..n)
            .map(|_| match self {
                Trace::Random(l) => rng.gen_bool(l),
                Trace::Bursty { p, r } => {
                    bad = if bad {
                        !rng.gen_bool(r)
                    } else {
                        rng.gen_bool(p)
                    };
                    bad
                }
            })
            .collect()
    }
}

struct Run {
    audio: Vec<i16>,
    lost: usize,
    mean_datagram: f64,
    max_datagram: usize,
}

/// Frames of `input` (padded), plus `tail` frames of silence to drain.
fn frames(input: &[i16], tail: usize) -> Vec<Vec<i16>> {
    let mut out: Vec<Vec<i16>> = input
        .chunks(FRAME_SAMPLES)
        .map(|c| {
            let mut f = c.to_vec();
            f.resize(FRAME_SAMPLES, 0);
            f
        })
        .collect();
    out.extend((0..tail).map(|_| vec![0; FRAME_SAMPLES]));
    out
}

/// Natter's settings, or what `QUALITY_BITRATE` (b/s), `QUALITY_EXPECTED_LOSS`
/// (the encoder's expected loss, percent) and `QUALITY_DECODER_COMPLEXITY`
/// set instead (to compare settings; the reference path keeps Natter's
/// bitrate).
fn natter_config() -> MediaConfig {
    let mut config = MediaConfig::default();
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    if let Some(loss) = var("QUALITY_EXPECTED_LOSS") {
        config.codec.expected_loss_percent = loss;
    }
    if let Some(bitrate) = var("QUALITY_BITRATE") {
        config.codec.bitrate = bitrate;
    }
    if let Some(complexity) = var("QUALITY_DECODER_COMPLEXITY") {
        config.codec.decoder_complexity = u8::try_from(complexity).expect("0..=10");
    }
    config
}

fn natter(input: &[i16], losses: &[bool]) -> Run {
    let config = natter_config();
    let mut link = Loopback::new(config, config, false).unwrap();
    let mut out = vec![0i16; FRAME_SAMPLES];
    let (mut audio, mut bytes, mut sent, mut max, mut lost) = (Vec::new(), 0, 0, 0, 0);
    for (i, pcm) in frames(input, 10).iter().enumerate() {
        let drop = losses[i];
        lost += usize::from(drop);
        let t = link.tick(pcm, |_| !drop, &mut out).unwrap();
        bytes += t.sent_bytes;
        sent += t.sent;
        max = max.max(t.max_datagram);
        if t.played {
            audio.extend_from_slice(&out);
        }
    }
    Run {
        audio,
        lost,
        mean_datagram: bytes as f64 / sent as f64,
        max_datagram: max,
    }
}

fn reference(input: &[i16], losses: &[bool], loss_percent: f64) -> Run {
    let config = CodecConfig {
        expected_loss_percent: loss_percent.round() as i32,
        decoder_complexity: 0,
        ..CodecConfig::default()
    };
    let mut enc = Encoder::new(config).unwrap();
    let mut dec = Decoder::new(0).unwrap();
    let mut buf = [0u8; MAX_PACKET];
    let packets: Vec<Vec<u8>> = frames(input, 0)
        .iter()
        .map(|f| {
            let n = enc.encode(f, &mut buf).unwrap();
            assert_eq!(packet_mode(&buf[..n]).map(|m| m.0), Some("silk"));
            buf[..n].to_vec()
        })
        .collect();
    let mut audio = Vec::new();
    let mut out = vec![0i16; FRAME_SAMPLES];
    let mut lost = 0;
    for (i, p) in packets.iter().enumerate() {
        if !losses[i] {
            dec.decode(p, &mut out).unwrap();
        } else {
            lost += 1;
            match packets.get(i + 1).filter(|_| !losses[i + 1]) {
                Some(next) => dec.decode_fec(next, &mut out).unwrap(),
                None => dec.conceal(&mut out).unwrap(),
            }
        }
        audio.extend_from_slice(&out);
    }
    let total: usize = packets.iter().map(|p| p.len() + OVERHEAD).sum();
    Run {
        audio,
        lost,
        mean_datagram: total as f64 / packets.len() as f64,
        max_datagram: packets
            .iter()
            .map(|p| p.len() + OVERHEAD)
            .max()
            .unwrap_or(0),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((out_dir, inputs)) = args.split_first() else {
        eprintln!("usage: quality OUT_DIR SPEECH.wav...");
        std::process::exit(2);
    };
    let out_dir = PathBuf::from(out_dir);
    std::fs::create_dir_all(&out_dir).expect("output directory");
    let traces = [
        Trace::Random(0.0),
        Trace::Random(0.02),
        Trace::Random(0.05),
        Trace::Random(0.10),
        Trace::Bursty {
            p: 0.05 / 0.95 / 3.0,
            r: 1.0 / 3.0,
        },
    ];
    println!("speech\tcase\tpath\tfile\tframes\tlost\tmean_datagram\tmax_datagram");
    for input in inputs {
        let path = Path::new(input);
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("speech");
        let pcm = read_mono_48k(path).expect("readable WAV");
        let n = pcm.len().div_ceil(FRAME_SAMPLES) + 10;
        for trace in traces {
            let losses = trace.losses(n);
            for (which, run) in [
                ("natter", natter(&pcm, &losses)),
                ("reference", reference(&pcm, &losses, trace.percent())),
            ] {
                let file = out_dir.join(format!("{name}.{}.{which}.wav", trace.name()));
                write_mono_48k(&file, &run.audio).expect("writable WAV");
                println!(
                    "{name}\t{}\t{which}\t{}\t{}\t{}\t{:.2}\t{}",
                    trace.name(),
                    file.display(),
                    n,
                    run.lost,
                    run.mean_datagram,
                    run.max_datagram
                );
            }
        }
    }
}
