//! A conference's audio through the real codec, in memory: every
//! participant talks in its own tone, the non-hosts' voices are Opus-encoded
//! to the host, the host decodes every leg, mixes mix-minus with its own
//! microphone and encodes one stream per leg, and each participant decodes
//! what it is sent (the host plays its own mix). Every participant must hear
//! every other tone and not its own, measured by correlating what it hears
//! with each source's sine and cosine (lag-independent: two codec passes
//! delay the audio).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use natter_media::FRAME_SAMPLES;
use natter_media::codec::{CodecConfig, Decoder, Encoder, MAX_PACKET};
use natter_media::mix::{MAX_LEGS, Mixer};
use natter_media::score::{
    CONFERENCE_TONES_HZ, TONE_ABSENT_MAX, TONE_HEARD_MIN, conference_tone,
    tone_amplitude as amplitude,
};

const TONES_HZ: [f64; MAX_LEGS] = CONFERENCE_TONES_HZ;
const FRAMES: usize = 100;
/// Frames left out at the start (encoder and decoder settling).
const SETTLE: usize = 25;

fn tone_frame(hz: f64, k: usize) -> [i16; FRAME_SAMPLES] {
    let samples = conference_tone(hz, k * FRAME_SAMPLES, FRAME_SAMPLES);
    std::array::from_fn(|i| samples[i])
}

/// What each participant heard in a conference of `parties` (participant 0
/// hosts).
fn conference(parties: usize) -> Vec<Vec<i16>> {
    let config = CodecConfig::default();
    let legs = parties - 1;
    let mut mixer = Mixer::new(parties).unwrap();
    let mut talkers: Vec<Encoder> = (0..legs).map(|_| Encoder::new(config).unwrap()).collect();
    let mut host_in: Vec<Decoder> = (0..legs)
        .map(|_| Decoder::new(config.decoder_complexity).unwrap())
        .collect();
    let mut host_out: Vec<Encoder> = (0..legs).map(|_| Encoder::new(config).unwrap()).collect();
    let mut listeners: Vec<Decoder> = (0..legs)
        .map(|_| Decoder::new(config.decoder_complexity).unwrap())
        .collect();
    let mut heard = vec![Vec::with_capacity(FRAMES * FRAME_SAMPLES); parties];
    let mut packet = [0u8; MAX_PACKET];
    let mut frame = [0i16; FRAME_SAMPLES];
    for k in 0..FRAMES {
        *mixer.input(0).unwrap() = tone_frame(TONES_HZ[0], k);
        for leg in 0..legs {
            let n = talkers[leg]
                .encode(&tone_frame(TONES_HZ[leg + 1], k), &mut packet)
                .unwrap();
            assert!(n + 21 <= 67, "a leg's datagram stays within 67 bytes");
            host_in[leg]
                .decode(&packet[..n], mixer.input(leg + 1).unwrap())
                .unwrap();
        }
        mixer.mix();
        heard[0].extend_from_slice(mixer.output(0).unwrap());
        for leg in 0..legs {
            let n = host_out[leg]
                .encode(mixer.output(leg + 1).unwrap(), &mut packet)
                .unwrap();
            listeners[leg].decode(&packet[..n], &mut frame).unwrap();
            heard[leg + 1].extend_from_slice(&frame);
        }
    }
    heard
}

fn check(parties: usize) {
    let heard = conference(parties);
    for (p, audio) in heard.iter().enumerate() {
        let audio = &audio[SETTLE * FRAME_SAMPLES..];
        let levels: Vec<f64> = TONES_HZ[..parties]
            .iter()
            .map(|&hz| amplitude(audio, hz))
            .collect();
        println!("{parties} parties, participant {p} hears amplitudes {levels:.0?}");
        for (q, level) in levels.iter().enumerate() {
            if p == q {
                assert!(
                    *level < TONE_ABSENT_MAX,
                    "participant {p} hears itself at {level:.0} (of 5000)"
                );
            } else {
                // 5000 at the source; each codec pass keeps most of it.
                assert!(
                    *level > TONE_HEARD_MIN,
                    "participant {p} hears participant {q} at only {level:.0} (of 5000)"
                );
            }
        }
    }
}

#[test]
fn three_parties_hear_each_other_and_not_themselves_through_opus() {
    check(3);
}

#[test]
fn five_parties_hear_each_other_and_not_themselves_through_opus() {
    check(5);
}
