//! An estimated MOS for the call report: the E-model of ITU-T G.107
//! (06/2015), narrowband rating scale, every parameter at its G.107 default
//! except the ones a call measures:
//!
//! * the mouth-to-ear delay `Ta` (and with it the talker-echo delay `T = Ta`
//!   and the listener-echo round trip `Tr = 2 Ta`, G.107's defaults for an
//!   echo-cancelled path: TELR 65 dB, WEPL 110 dB);
//! * the packet loss `Ppl` (in percent) and its burstiness `BurstR`;
//! * the codec's equipment impairment `Ie` and packet-loss robustness `Bpl`.
//!
//! ```text
//! R   = Ro - Is - Id - Ie,eff + A          (A = 0)
//! Ro - Is = 94.77 - 1.43 = 93.34           (G.107 defaults; R = 93.2 with Id's default 0.15)
//! Id  = Idte(T) + Idle(Tr) + Idd(Ta)
//! Ie,eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl)
//! MOS = 1 + 0.035 R + R (R - 60) (100 - R) 7e-6   (0 < R < 100; G.107 Annex B)
//! ```
//!
//! **Opus's `Ie` and `Bpl`.** ITU-T G.113 Appendix I lists no values for
//! Opus. Natter's figures for its own setting (18 kb/s CBR wideband SILK,
//! in-band FEC, decoder complexity 10) are derived the way ITU-T P.834
//! derives them from an instrumental model: the quality bench
//! (`scripts/quality`, docs/results/voice-quality.md) measures PESQ-WB
//! (ITU-T P.862.2) of speech through Natter's pipeline at 0, 2, 5 and 10 %
//! random loss; each score is turned into R with the inverse of the MOS
//! curve above; `Ie = 93.2 - R(0 %)` and `Bpl` is the least-squares fit of
//! the model's MOS to the lossy cases (`scripts/quality` prints both; on
//! 2026-12-02: Ie 20.7, Bpl 12.5). They describe *this* codec setting as
//! PESQ-WB hears it, on the narrowband rating scale, nothing more: an
//! estimate, not a measurement of the call.

/// The equipment impairment and loss robustness of a codec setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodecImpairment {
    /// `Ie`: impairment with no loss.
    pub ie: f64,
    /// `Bpl`: packet-loss robustness (higher is more robust).
    pub bpl: f64,
}

/// Natter's Opus at 18 kb/s (see the module documentation for how these
/// were derived; docs/results/voice-quality.md has the measurements).
pub const OPUS_18K_WB: CodecImpairment = CodecImpairment {
    ie: 20.7,
    bpl: 12.5,
};

/// What a call measured, for the E-model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conditions {
    /// One-way mouth-to-ear delay, in ms.
    pub delay_ms: f64,
    /// Packet loss, in percent (0..=100).
    pub loss_percent: f64,
    /// Burst ratio (1 for random loss; G.107 7.2).
    pub burst_ratio: f64,
}

/// G.107 default: `Ro - Is` (Ro = 94.77, Is = 1.43).
const RO_MINUS_IS: f64 = 93.34;
/// G.107 default Ro, the basic signal-to-noise ratio (the echo terms use it).
const RO: f64 = 94.77;
/// G.107 defaults for an echo-cancelled path.
const TELR: f64 = 65.0;
const WEPL: f64 = 110.0;
/// G.107 default `mT` (ms): delay below which `Idd` is 0.
const MT: f64 = 100.0;

/// Talker echo impairment at one-way echo delay `t` ms (G.107 7.3, STMR at
/// its default 15 dB, so no sidetone correction).
fn idte(t: f64) -> f64 {
    // Roe = -1.5 (No - RLR) with No = -61.18 dBm0 and RLR = 2 dB.
    let roe = -1.5 * (-61.18 - 2.0);
    let terv =
        TELR - 40.0 * ((1.0 + t / 10.0) / (1.0 + t / 150.0)).log10() + 6.0 * (-0.3 * t * t).exp();
    let re = 80.0 + 2.5 * (terv - 14.0);
    let d = roe - re;
    (d / 2.0 + (d * d / 4.0 + 100.0).sqrt() - 1.0) * (1.0 - (-t).exp())
}

/// Listener echo impairment at round-trip delay `tr` ms (G.107 7.3).
fn idle(tr: f64) -> f64 {
    let rle = 10.5 * (WEPL + 7.0) * (tr + 1.0).powf(-0.25);
    let d = RO - rle;
    d / 2.0 + (d * d / 4.0 + 169.0).sqrt()
}

/// Impairment of a too-long absolute delay `ta` ms (G.107 7.3, sT = 1).
fn idd(ta: f64) -> f64 {
    if ta <= MT {
        return 0.0;
    }
    let x = (ta / MT).log2();
    25.0 * ((1.0 + x.powi(6)).powf(1.0 / 6.0) - 3.0 * (1.0 + (x / 3.0).powi(6)).powf(1.0 / 6.0)
        + 2.0)
}

/// The effective equipment impairment under loss (G.107 7.2).
pub fn ie_eff(codec: CodecImpairment, loss_percent: f64, burst_ratio: f64) -> f64 {
    let ppl = loss_percent.clamp(0.0, 100.0);
    let burst = burst_ratio.max(1.0);
    if ppl == 0.0 {
        return codec.ie;
    }
    codec.ie + (95.0 - codec.ie) * ppl / (ppl / burst + codec.bpl)
}

/// The transmission rating R for `codec` under `c`.
pub fn rating(codec: CodecImpairment, c: Conditions) -> f64 {
    let ta = c.delay_ms.max(0.0);
    let id = idte(ta) + idle(2.0 * ta) + idd(ta);
    RO_MINUS_IS - id - ie_eff(codec, c.loss_percent, c.burst_ratio)
}

/// MOS (conversational quality, estimated) from R (G.107 Annex B).
pub fn mos(r: f64) -> f64 {
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        // The cubic dips just below 1 for R under 6.5: MOS stays 1 there.
        (1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6).max(1.0)
    }
}

/// R for a MOS (the inverse of [`mos`] on 1..=4.5, by bisection; the curve
/// rises monotonically from R = 6.5 on). The quality bench uses it to turn
/// PESQ scores into `Ie` and `Bpl`.
pub fn rating_for_mos(target: f64) -> f64 {
    let (mut lo, mut hi) = (6.5, 100.0);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if mos(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// The estimated MOS of a call with `codec` under `c`.
pub fn estimate(codec: CodecImpairment, c: Conditions) -> f64 {
    mos(rating(codec, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const G711: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 4.3 };
    const QUIET: Conditions = Conditions {
        delay_ms: 0.0,
        loss_percent: 0.0,
        burst_ratio: 1.0,
    };

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// G.107: all defaults give R = 93.2 (Id = 0.15 from listener echo), MOS 4.41.
    #[test]
    fn defaults_give_r_93_2_and_mos_4_41() {
        let r = rating(G711, QUIET);
        assert!(close(r, 93.2, 0.05), "R {r}");
        assert!(close(idle(0.0), 0.15, 0.01), "Idle {}", idle(0.0));
        assert!(close(mos(r), 4.41, 0.005), "MOS {}", mos(r));
    }

    /// Points of G.107 Annex B's MOS curve and its ends.
    #[test]
    fn mos_curve() {
        assert_eq!(mos(-5.0), 1.0);
        assert_eq!(mos(120.0), 4.5);
        assert!(close(mos(50.0), 2.575, 1e-9), "{}", mos(50.0));
        assert!(close(mos(70.0), 3.597, 1e-9), "{}", mos(70.0));
        assert!(close(mos(80.0), 4.024, 1e-9), "{}", mos(80.0));
        for r in [10.0, 42.0, 77.7, 93.2] {
            assert!(close(rating_for_mos(mos(r)), r, 1e-6), "{r}");
        }
    }

    /// G.107 7.2 and G.113 Appendix I: G.711 with packet-loss concealment
    /// (Ie 0, Bpl 25.1) at 2 % random loss: Ie,eff = 95 * 2 / 27.1 = 7.01;
    /// bursty loss (BurstR 2) hurts more.
    #[test]
    fn effective_impairment_under_loss() {
        let g711_plc = CodecImpairment { ie: 0.0, bpl: 25.1 };
        assert!(close(ie_eff(g711_plc, 2.0, 1.0), 7.01, 0.005));
        assert!(ie_eff(g711_plc, 2.0, 2.0) > ie_eff(g711_plc, 2.0, 1.0));
        assert_eq!(ie_eff(g711_plc, 0.0, 1.0), 0.0);
        // A more robust codec (higher Bpl) loses less to the same loss.
        let robust = CodecImpairment { ie: 0.0, bpl: 40.0 };
        assert!(ie_eff(robust, 5.0, 1.0) < ie_eff(g711_plc, 5.0, 1.0));
    }

    /// G.107 7.3: Idd is 0 up to 100 ms and 25 {2^(1/6) - 3 (1 + 3^-6)^(1/6) + 2}
    /// = 3.04 at 200 ms; the delay impairment grows with delay: at 400 ms
    /// one way an otherwise perfect G.711 call rates R 62 (Idd 24.1, Idte
    /// 5.8, Idle 1.2), MOS 3.2.
    #[test]
    fn delay_impairment() {
        assert_eq!(idd(100.0), 0.0);
        assert!(close(idd(200.0), 3.04, 0.01), "{}", idd(200.0));
        let at = |ms: f64| {
            rating(
                G711,
                Conditions {
                    delay_ms: ms,
                    ..QUIET
                },
            )
        };
        assert!(at(50.0) < at(0.0) && at(150.0) < at(50.0) && at(400.0) < at(150.0));
        assert!(close(at(400.0), 62.2, 0.2), "{}", at(400.0));
        // Talker echo at 100 ms with TELR 65 dB: about 2.
        assert!(close(idte(100.0), 1.96, 0.05), "{}", idte(100.0));
    }

    #[test]
    fn opus_estimates_fall_with_loss_and_stay_in_range() {
        let mut last = 5.0;
        for loss in [0.0, 1.0, 2.0, 5.0, 10.0, 30.0, 100.0] {
            let m = estimate(
                OPUS_18K_WB,
                Conditions {
                    delay_ms: 60.0,
                    loss_percent: loss,
                    burst_ratio: 1.0,
                },
            );
            assert!((1.0..=4.5).contains(&m), "{loss}%: {m}");
            assert!(m < last || m == 1.0, "{loss}%: {m} after {last}");
            last = m;
        }
    }
}
