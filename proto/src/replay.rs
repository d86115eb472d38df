//! Rebuilding the sender's 64-bit packet index from the 16-bit message id,
//! and rejecting replays.
//!
//! The sender numbers its datagrams per direction, starting at a random value
//! below 2^16 (like SRTP's random initial sequence number with a rollover
//! counter of 0) and adding one per datagram. Only the low 16 bits travel, as
//! the SoM message id. The receiver guesses the high bits as SRTP does
//! (RFC 3711, section 3.3.1 and appendix A): of the three candidates
//! `roc-1`, `roc`, `roc+1` it takes the one that puts the index closest to the
//! highest index it has authenticated so far.
//!
//! The index is then the AEAD nonce input, so a wrong guess only makes the
//! packet fail authentication. The window below is updated only after a packet
//! authenticated ([`ReplayWindow::accept`]), so forged packets cannot move it.

/// How many indices behind the highest one are still accepted (once each).
pub const WINDOW: u64 = 128;

/// Why an index was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("index {index} was already received")]
    Replayed { index: u64 },
    #[error("index {index} is behind the replay window (highest {highest}, window {WINDOW})")]
    TooOld { index: u64, highest: u64 },
    #[error("the 64-bit packet index is exhausted")]
    Exhausted,
}

/// The receive side's replay state for one direction.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// Highest authenticated index, if any.
    highest: Option<u64>,
    /// Bit `i` set: index `highest - i` was received.
    seen: u128,
}

impl ReplayWindow {
    /// A window that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest authenticated index.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// The full index that a 16-bit message id most likely stands for.
    pub fn estimate(&self, msg_id: u16) -> Result<u64, ReplayError> {
        let Some(highest) = self.highest else {
            // First packet: the sender starts below 2^16.
            return Ok(u64::from(msg_id));
        };
        let roc = highest >> 16;
        let s_l = highest & 0xFFFF;
        let seq = u64::from(msg_id);
        let v = if s_l < 0x8000 {
            if seq > s_l + 0x8000 {
                // Far above the last seen low bits: it is from before the
                // last rollover. With roc 0 that would be before the start.
                match roc.checked_sub(1) {
                    Some(v) => v,
                    None => {
                        return Err(ReplayError::TooOld {
                            index: seq,
                            highest,
                        });
                    }
                }
            } else {
                roc
            }
        } else if s_l - 0x8000 > seq {
            roc + 1
        } else {
            roc
        };
        v.checked_mul(1 << 16)
            .map(|base| base | seq)
            .ok_or(ReplayError::Exhausted)
    }

    /// Whether `index` may still be accepted.
    pub fn check(&self, index: u64) -> Result<(), ReplayError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if index > highest {
            return Ok(());
        }
        let behind = highest - index;
        if behind >= WINDOW {
            return Err(ReplayError::TooOld { index, highest });
        }
        if self.seen & (1u128 << behind) != 0 {
            return Err(ReplayError::Replayed { index });
        }
        Ok(())
    }

    /// Records an authenticated index. Call only after [`Self::check`] passed
    /// and the packet authenticated.
    pub fn accept(&mut self, index: u64) {
        match self.highest {
            None => {
                self.highest = Some(index);
                self.seen = 1;
            }
            Some(highest) if index > highest => {
                let ahead = index - highest;
                self.seen = if ahead >= WINDOW {
                    0
                } else {
                    self.seen << ahead
                };
                self.seen |= 1;
                self.highest = Some(index);
            }
            Some(highest) => {
                let behind = highest - index;
                if behind < WINDOW {
                    self.seen |= 1u128 << behind;
                }
            }
        }
    }
}
