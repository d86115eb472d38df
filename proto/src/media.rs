//! Sealing and opening SoM datagrams with AES-256-GCM.
//!
//! ```text
//! datagram = SoM header (3) || AES-256-GCM(key, nonce, aad = SoM header, plaintext) || tag (16)
//! nonce    = iv XOR (0x00000000 || index as u64 big-endian)
//! ```
//!
//! `index` is the sender's per-direction packet counter (see [`crate::replay`]);
//! only its low 16 bits travel, as the message id. Every function (ping,
//! probes, data) is sealed with the same counter, so a nonce never repeats
//! under one key. The opener authenticates before it updates its replay
//! window, so a forged or tampered datagram cannot disturb the stream.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};

use crate::handshake::{DirectionKeys, IV_LEN};
use crate::replay::{ReplayError, ReplayWindow};
use crate::som::{self, Function, Header, SomError};

/// Highest first index a sender may pick (2^15 - 1).
pub const MAX_START: u16 = 0x7FFF;

/// Bytes of the AEAD tag.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed datagram adds to its plaintext.
pub const OVERHEAD: usize = som::HEADER_LEN + TAG_LEN;

/// Why a datagram could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the 64-bit packet index is exhausted: rekey the call")]
    Exhausted,
    #[error("AEAD encryption failed")]
    Aead,
}

/// Why a received datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Som(#[from] SomError),
    #[error("datagram of {0} bytes is too short to hold a tag")]
    NoTag(usize),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("authentication failed (wrong key or tampered datagram)")]
    Auth,
}

/// The AEAD nonce for a packet index.
pub fn nonce(iv: &[u8; IV_LEN], index: u64) -> [u8; IV_LEN] {
    let mut nonce = *iv;
    for (n, i) in nonce[4..].iter_mut().zip(index.to_be_bytes()) {
        *n ^= i;
    }
    nonce
}

/// The sending half of one direction.
pub struct Sealer {
    cipher: Aes256Gcm,
    iv: [u8; IV_LEN],
    next_index: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("next_index", &self.next_index)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer whose first index is `start` (random, from the caller's RNG,
    /// below [`MAX_START`]: the headroom keeps the receiver's first guess of
    /// the rollover right even when the first datagrams are lost).
    pub fn new(keys: &DirectionKeys, start: u16) -> Self {
        Self {
            cipher: Aes256Gcm::new(&keys.key.into()),
            iv: keys.iv,
            next_index: u64::from(start),
        }
    }

    /// The index the next datagram will use.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Seals `plaintext` as one datagram appended to `out`; `random` supplies
    /// the three random bits of the function byte. Returns the index used.
    pub fn seal(
        &mut self,
        function: Function,
        random: u8,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u64, SealError> {
        let index = self.next_index;
        let next = index.checked_add(1).ok_or(SealError::Exhausted)?;
        let header = Header::new(index as u16, function, random).to_bytes();
        let start = out.len();
        out.reserve(OVERHEAD + plaintext.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(plaintext);
        let nonce = nonce(&self.iv, index);
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                &header,
                (&mut out[start + som::HEADER_LEN..]).into(),
            )
            .map_err(|_| SealError::Aead)?;
        out.extend_from_slice(tag.as_slice());
        self.next_index = next;
        Ok(index)
    }
}

/// A datagram that authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub header: Header,
    pub index: u64,
}

/// The receiving half of one direction.
pub struct Opener {
    cipher: Aes256Gcm,
    iv: [u8; IV_LEN],
    window: ReplayWindow,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// An opener for datagrams sealed with `keys`.
    pub fn new(keys: &DirectionKeys) -> Self {
        Self {
            cipher: Aes256Gcm::new(&keys.key.into()),
            iv: keys.iv,
            window: ReplayWindow::new(),
        }
    }

    /// The replay window (highest index received so far).
    pub fn window(&self) -> &ReplayWindow {
        &self.window
    }

    /// Authenticates and decrypts `datagram`, writing the plaintext to `out`
    /// (cleared first). Any error means: drop the datagram and count it.
    pub fn open(&mut self, datagram: &[u8], out: &mut Vec<u8>) -> Result<Opened, OpenError> {
        let (header, sealed) = Header::decode(datagram)?;
        let ciphertext_len = sealed
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(OpenError::NoTag(datagram.len()))?;
        let estimate = self.window.estimate(header.msg_id)?;
        self.window.check(estimate)?;
        let (ciphertext, tag) = sealed.split_at(ciphertext_len);
        let aad = &datagram[..som::HEADER_LEN];
        let tag = Tag::try_from(tag).map_err(|_| OpenError::Auth)?;
        // Before anything authenticated, the first datagram to arrive may
        // come after the sender's first rollover: try one rollover up too.
        let tries: &[u64] = if self.window.highest().is_none() {
            &[estimate, estimate + (1 << 16)]
        } else {
            &[estimate]
        };
        for &index in tries {
            if self.decrypt(aad, ciphertext, &tag, index, out) {
                self.window.accept(index);
                return Ok(Opened { header, index });
            }
        }
        out.clear();
        Err(OpenError::Auth)
    }

    /// Authenticates and decrypts `datagram` as the one sealed at `index`,
    /// writing the plaintext to `out` (cleared first), **without** the replay
    /// window: neither checked nor moved. For tools that study captures
    /// (`natter-decrypt`), where the same datagram may be seen twice (to and
    /// from a relay) and the index comes from elsewhere; a receiver uses
    /// [`Self::open`].
    pub fn open_at(
        &self,
        datagram: &[u8],
        index: u64,
        out: &mut Vec<u8>,
    ) -> Result<Header, OpenError> {
        let (header, sealed) = Header::decode(datagram)?;
        let ciphertext_len = sealed
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(OpenError::NoTag(datagram.len()))?;
        let (ciphertext, tag) = sealed.split_at(ciphertext_len);
        let tag = Tag::try_from(tag).map_err(|_| OpenError::Auth)?;
        if self.decrypt(&datagram[..som::HEADER_LEN], ciphertext, &tag, index, out) {
            Ok(header)
        } else {
            out.clear();
            Err(OpenError::Auth)
        }
    }

    /// Decrypts `ciphertext` sealed at `index` into `out`; whether it
    /// authenticated.
    fn decrypt(
        &self,
        aad: &[u8],
        ciphertext: &[u8],
        tag: &Tag,
        index: u64,
        out: &mut Vec<u8>,
    ) -> bool {
        out.clear();
        out.extend_from_slice(ciphertext);
        let nonce = nonce(&self.iv, index);
        self.cipher
            .decrypt_inout_detached(&Nonce::from(nonce), aad, out.as_mut_slice().into(), tag)
            .is_ok()
    }
}

/// Bytes of the frame number at the start of a `Data` plaintext.
pub const FRAME_NUMBER_LEN: usize = 2;

/// A `Data` plaintext that is too short to hold its frame number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("media frame of {0} bytes has no frame number")]
pub struct MediaFrameError(pub usize);

/// Builds a `Data` plaintext: `frame number (u16 BE) || codec payload`.
pub fn encode_media_frame(number: u16, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&number.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Splits a `Data` plaintext into its frame number and codec payload.
pub fn decode_media_frame(plaintext: &[u8]) -> Result<(u16, &[u8]), MediaFrameError> {
    let (number, payload) = plaintext
        .split_first_chunk::<FRAME_NUMBER_LEN>()
        .ok_or(MediaFrameError(plaintext.len()))?;
    Ok((u16::from_be_bytes(*number), payload))
}
