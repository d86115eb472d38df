//! The SoM ("start of message") header of every Natter UDP datagram, after
//! the one Skype used: sent in clear, three bytes.
//!
//! ```text
//!  0               1               2
//! +---------------+---------------+---------------+------------------------+
//! |    message id (u16, big-endian)| function byte |  sealed frame ...      |
//! +---------------+---------------+---------------+------------------------+
//! function byte: bit 7 and bits 0-3 carry the function (byte & 0x8F),
//!                bits 4-6 are random (byte & 0x70)
//! ```
//!
//! The message id is the low 16 bits of the sender's per-direction packet
//! index; see [`crate::replay`] for how the receiver rebuilds the full index.

/// Bytes of the SoM header.
pub const HEADER_LEN: usize = 3;
/// Bits of the function byte that carry the function.
pub const FUNCTION_MASK: u8 = 0x8F;
/// Bits of the function byte that are random.
pub const RANDOM_MASK: u8 = 0x70;

/// What a datagram is for (`function byte & 0x8F`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Function {
    /// Keepalive, sent whenever no media flows (keeps NAT bindings open).
    Ping = 0x02,
    /// Connection management: binds a path to a call (relay allocation use, path switch).
    Connect = 0x03,
    /// Connectivity check request (hole punching, RTT measurement).
    Probe = 0x07,
    /// Connectivity check answer.
    ProbeReply = 0x0f,
    /// A media frame.
    Data = 0x0d,
}

impl Function {
    /// Every function, in code order.
    pub const ALL: [Function; 5] = [
        Function::Ping,
        Function::Connect,
        Function::Probe,
        Function::Data,
        Function::ProbeReply,
    ];

    /// The function carried by a function byte, if it is one we know.
    pub fn from_byte(byte: u8) -> Result<Self, SomError> {
        match byte & FUNCTION_MASK {
            0x02 => Ok(Function::Ping),
            0x03 => Ok(Function::Connect),
            0x07 => Ok(Function::Probe),
            0x0f => Ok(Function::ProbeReply),
            0x0d => Ok(Function::Data),
            other => Err(SomError::UnknownFunction(other)),
        }
    }
}

/// Why a datagram's SoM header could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SomError {
    #[error("datagram of {0} bytes is shorter than the SoM header")]
    Truncated(usize),
    #[error("unknown SoM function {0:#04x}")]
    UnknownFunction(u8),
}

/// A decoded SoM header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    pub msg_id: u16,
    pub function: Function,
    /// The three random bits, in 0..=7.
    pub random: u8,
}

impl Header {
    /// A header; only the low three bits of `random` are used.
    pub fn new(msg_id: u16, function: Function, random: u8) -> Self {
        Self {
            msg_id,
            function,
            random: random & 0x07,
        }
    }

    /// The function byte: function bits plus the random bits in 4-6.
    pub fn function_byte(&self) -> u8 {
        ((self.random & 0x07) << 4) | self.function as u8
    }

    /// The three header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let [hi, lo] = self.msg_id.to_be_bytes();
        [hi, lo, self.function_byte()]
    }

    /// Splits a datagram into its header and the sealed frame that follows.
    pub fn decode(datagram: &[u8]) -> Result<(Header, &[u8]), SomError> {
        let (head, rest) = datagram
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(SomError::Truncated(datagram.len()))?;
        let function = Function::from_byte(head[2])?;
        let header = Header {
            msg_id: u16::from_be_bytes([head[0], head[1]]),
            function,
            random: (head[2] & RANDOM_MASK) >> 4,
        };
        Ok((header, rest))
    }
}
