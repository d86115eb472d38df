//! Mix-minus for a conference host: every leg hears the sum of the others,
//! never itself.
//!
//! The host of a conference (`natter_proto::conference`) decodes one 20 ms
//! frame from every leg, plus its own microphone, into a [`Mixer`]'s inputs;
//! [`Mixer::mix`] writes, for each input `i`, the sum of all inputs but `i`
//! (the host's own input's output is what the host plays locally). The sum
//! is taken once in 32 bits and each output is that sum less its own input,
//! saturated to 16 bits (clipped samples counted), so a frame costs
//! `2 x legs x 960` additions whatever the number of legs. Nothing is
//! allocated per frame: the buffers are made once in [`Mixer::new`].

use crate::codec::FRAME_SAMPLES;

/// Most inputs one mixer takes: a five-party conference's host (its own
/// microphone and four legs).
pub const MAX_LEGS: usize = 5;

/// A mixer that cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MixError {
    #[error("a mixer takes 1 to {MAX_LEGS} legs, not {0}")]
    Legs(usize),
}

/// Mix-minus over up to [`MAX_LEGS`] legs of 20 ms frames at 48 kHz.
#[derive(Debug)]
pub struct Mixer {
    legs: usize,
    inputs: Box<[[i16; FRAME_SAMPLES]; MAX_LEGS]>,
    outputs: Box<[[i16; FRAME_SAMPLES]; MAX_LEGS]>,
    sum: Box<[i32; FRAME_SAMPLES]>,
    clipped: u64,
}

impl Mixer {
    /// A mixer of `legs` inputs (1 to [`MAX_LEGS`]), all silent.
    pub fn new(legs: usize) -> Result<Self, MixError> {
        let mut mixer = Self {
            legs: 0,
            inputs: Box::new([[0; FRAME_SAMPLES]; MAX_LEGS]),
            outputs: Box::new([[0; FRAME_SAMPLES]; MAX_LEGS]),
            sum: Box::new([0; FRAME_SAMPLES]),
            clipped: 0,
        };
        mixer.set_legs(legs)?;
        Ok(mixer)
    }

    /// Changes the number of legs (a participant joined or left); inputs
    /// beyond it are silenced. Allocates nothing.
    pub fn set_legs(&mut self, legs: usize) -> Result<(), MixError> {
        if !(1..=MAX_LEGS).contains(&legs) {
            return Err(MixError::Legs(legs));
        }
        for input in &mut self.inputs[legs..] {
            input.fill(0);
        }
        self.legs = legs;
        Ok(())
    }

    /// The number of legs.
    pub fn legs(&self) -> usize {
        self.legs
    }

    /// Leg `i`'s input frame, to decode into (leave it, or fill it with
    /// zeros, for a leg that has nothing this frame). `None` past the legs.
    pub fn input(&mut self, i: usize) -> Option<&mut [i16; FRAME_SAMPLES]> {
        self.inputs[..self.legs].get_mut(i)
    }

    /// Mixes the current inputs: output `i` becomes the sum of every input
    /// but `i`, saturated.
    pub fn mix(&mut self) {
        let legs = self.legs;
        self.sum.fill(0);
        for input in &self.inputs[..legs] {
            for (s, &x) in self.sum.iter_mut().zip(input.iter()) {
                *s += i32::from(x);
            }
        }
        let mut clipped = 0u64;
        for (input, output) in self.inputs[..legs].iter().zip(&mut self.outputs[..legs]) {
            for ((o, &s), &x) in output.iter_mut().zip(self.sum.iter()).zip(input.iter()) {
                let v = s - i32::from(x);
                let c = v.clamp(i32::from(i16::MIN), i32::from(i16::MAX));
                clipped += u64::from(c != v);
                *o = c as i16;
            }
        }
        self.clipped += clipped;
    }

    /// What leg `i` hears (after [`Self::mix`]). `None` past the legs.
    pub fn output(&self, i: usize) -> Option<&[i16; FRAME_SAMPLES]> {
        self.outputs[..self.legs].get(i)
    }

    /// Samples saturated so far.
    pub fn clipped(&self) -> u64 {
        self.clipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::pearson;
    use crate::test_signal::tone;

    /// Distinct tones, each a whole number of cycles in a 20 ms frame (so
    /// they are orthogonal over it).
    const TONES_HZ: [f32; MAX_LEGS] = [300.0, 500.0, 700.0, 1_100.0, 1_700.0];

    fn frame_of(hz: f32, amplitude: f32) -> [i16; FRAME_SAMPLES] {
        let samples = tone(48_000, hz, 0.021, amplitude);
        std::array::from_fn(|n| samples[n] as i16)
    }

    fn corr(a: &[i16], b: &[i16]) -> f64 {
        let f = |x: &[i16]| x.iter().map(|&s| f64::from(s)).collect::<Vec<_>>();
        pearson(&f(a), &f(b))
    }

    #[test]
    fn each_leg_hears_the_others_and_never_itself() {
        for legs in 2..=MAX_LEGS {
            let mut mixer = Mixer::new(legs).unwrap();
            let sources: Vec<[i16; FRAME_SAMPLES]> =
                (0..legs).map(|i| frame_of(TONES_HZ[i], 6_000.0)).collect();
            for (i, source) in sources.iter().enumerate() {
                *mixer.input(i).unwrap() = *source;
            }
            mixer.mix();
            // Each output is the sum of legs - 1 equal, orthogonal tones: its
            // correlation with each of them is 1 / sqrt(legs - 1).
            let expected = 1.0 / ((legs - 1) as f64).sqrt();
            for i in 0..legs {
                let out = mixer.output(i).unwrap();
                for (j, source) in sources.iter().enumerate() {
                    let c = corr(out, source);
                    if i == j {
                        assert!(c.abs() < 0.02, "{legs} legs: leg {i} hears itself ({c:.3})");
                    } else {
                        assert!(
                            (c - expected).abs() < 0.02,
                            "{legs} legs: leg {i} hears leg {j} at {c:.3}, expected {expected:.3}"
                        );
                    }
                }
            }
            assert_eq!(mixer.clipped(), 0);
        }
    }

    #[test]
    fn exact_sums_and_saturation() {
        let mut mixer = Mixer::new(3).unwrap();
        mixer.input(0).unwrap().fill(1_000);
        mixer.input(1).unwrap().fill(-300);
        mixer.input(2).unwrap().fill(20);
        mixer.mix();
        assert!(mixer.output(0).unwrap().iter().all(|&s| s == -280));
        assert!(mixer.output(1).unwrap().iter().all(|&s| s == 1_020));
        assert!(mixer.output(2).unwrap().iter().all(|&s| s == 700));
        assert_eq!(mixer.clipped(), 0);

        // Four loud legs: each output saturates instead of wrapping round.
        let mut mixer = Mixer::new(MAX_LEGS).unwrap();
        for i in 0..4 {
            mixer.input(i).unwrap().fill(i16::MAX);
        }
        mixer.input(4).unwrap().fill(i16::MIN);
        mixer.mix();
        assert!(mixer.output(4).unwrap().iter().all(|&s| s == i16::MAX));
        // Leg 0 hears 3 x MAX + MIN = 2 x MAX - 1: saturated too.
        assert!(mixer.output(0).unwrap().iter().all(|&s| s == i16::MAX));
        assert_eq!(mixer.clipped(), 5 * FRAME_SAMPLES as u64);
    }

    #[test]
    fn legs_change_without_allocating_and_are_bounded() {
        assert_eq!(Mixer::new(0).unwrap_err(), MixError::Legs(0));
        assert_eq!(
            Mixer::new(MAX_LEGS + 1).unwrap_err(),
            MixError::Legs(MAX_LEGS + 1)
        );
        let mut mixer = Mixer::new(4).unwrap();
        for (i, hz) in TONES_HZ.iter().take(4).enumerate() {
            *mixer.input(i).unwrap() = frame_of(*hz, 5_000.0);
        }
        // A leg leaves: the fourth input is silenced and out of reach.
        mixer.set_legs(3).unwrap();
        assert!(mixer.input(3).is_none());
        assert!(mixer.output(3).is_none());
        mixer.set_legs(4).unwrap();
        assert!(mixer.input(3).unwrap().iter().all(|&s| s == 0));
        mixer.mix();
        let fourth = frame_of(TONES_HZ[3], 5_000.0);
        assert!(corr(mixer.output(0).unwrap(), &fourth).abs() < 0.02);
        // A single leg hears silence.
        mixer.set_legs(1).unwrap();
        mixer.mix();
        assert!(mixer.output(0).unwrap().iter().all(|&s| s == 0));
        assert!(mixer.set_legs(6).is_err());
        assert_eq!(mixer.legs(), 1);
    }
}
