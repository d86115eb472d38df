//! # natter-decrypt
//!
//! Opens the SoM datagrams of one's own Natter calls in a capture, with the
//! key log the client writes under `NATTER_KEYLOG` (docs/TRAFFIC.md): for
//! every UDP datagram of the capture that one of the logged call directions
//! authenticates, one line of the [listing](Listing::line) with its
//! plaintext. Voice frames (`Data`) show their frame number and Opus TOC,
//! probes their clock, pings nothing (their plaintext is empty).
//!
//! Nothing here is new cryptography: the datagrams are opened by
//! [`natter_proto::media::Opener::open_at`] and their index rebuilt by
//! [`natter_proto::replay::ReplayWindow::estimate`], as a receiver does,
//! without the replay check (a relayed datagram is seen twice in a capture,
//! to the relay and from it). What is new is only the reading of the key log
//! ([`parse_key_log`], total) and of each captured packet down to its UDP
//! payload ([`udp_payload`], total; the headers are parsed by `etherparse`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use etherparse::{EtherType, NetSlice, SlicedPacket, TransportSlice};

/// Bytes of a Linux cooked v2 header: protocol (the EtherType, 2),
/// reserved (2), interface index (4), ARPHRD type (2), packet type (1),
/// address length (1), address (8).
const SLL2_HEADER_LEN: usize = 20;
use natter_proto::handshake::{CALL_ID_LEN, DirectionKeys, IV_LEN, KEY_LEN};
use natter_proto::media::{Opener, decode_media_frame};
use natter_proto::replay::ReplayWindow;
use natter_proto::som::{self, Function};

/// The label of a call key line (`natter_client::keylog::CALL_LABEL`).
pub const CALL_LABEL: &str = "NATTER_CALL";

/// Which way a call direction goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// From the caller to the callee.
    C2s,
    /// From the callee to the caller.
    S2c,
}

impl Direction {
    /// Its name in the key log and the listing.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::C2s => "c2s",
            Direction::S2c => "s2c",
        }
    }
}

/// The keys of one direction of one call, from the key log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallDirection {
    pub call_id: [u8; CALL_ID_LEN],
    pub direction: Direction,
    pub keys: DirectionKeys,
    /// The sender's first index, when the log holds the sender's line.
    pub first_index: Option<u64>,
}

/// A `NATTER_CALL` line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key log line {line}: {what}")]
pub struct KeyLogError {
    /// 1-based line number.
    pub line: usize,
    pub what: String,
}

fn hex_array<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    let bytes = hex::decode(text).map_err(|e| format!("{what}: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{what}: {} bytes, expected {N}", b.len()))
}

fn parse_call_line(line: &str) -> Result<CallDirection, String> {
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    let [_, call_id, direction, key, iv, first] = fields.as_slice() else {
        return Err(format!(
            "{} fields, expected 6: {CALL_LABEL} CALL_ID c2s|s2c KEY IV FIRST_INDEX|-",
            fields.len()
        ));
    };
    let direction = match *direction {
        "c2s" => Direction::C2s,
        "s2c" => Direction::S2c,
        other => return Err(format!("direction {other:?}, expected c2s or s2c")),
    };
    let first_index = match *first {
        "-" => None,
        n => Some(
            n.parse::<u64>()
                .map_err(|e| format!("first index {n:?}: {e}"))?,
        ),
    };
    Ok(CallDirection {
        call_id: hex_array::<CALL_ID_LEN>(call_id, "call id")?,
        direction,
        keys: DirectionKeys {
            key: hex_array::<KEY_LEN>(key, "key")?,
            iv: hex_array::<IV_LEN>(iv, "iv")?,
        },
        first_index,
    })
}

/// Reads the `NATTER_CALL` lines of a key log (other lines, the TLS
/// secrets, are skipped). A direction logged twice (both ends wrote to one
/// file) is kept once, with the first index if either line has it.
pub fn parse_key_log(text: &str) -> Result<Vec<CallDirection>, KeyLogError> {
    let mut found: BTreeMap<([u8; CALL_ID_LEN], Direction), CallDirection> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.split_ascii_whitespace().next() != Some(CALL_LABEL) {
            continue;
        }
        let parsed = parse_call_line(line).map_err(|what| KeyLogError { line: n + 1, what })?;
        let entry = found
            .entry((parsed.call_id, parsed.direction))
            .or_insert_with(|| parsed.clone());
        if entry.keys != parsed.keys {
            return Err(KeyLogError {
                line: n + 1,
                what: "another key for a call direction logged before".into(),
            });
        }
        entry.first_index = entry.first_index.or(parsed.first_index);
    }
    Ok(found.into_values().collect())
}

/// The link layers a capture may have (pcap LINKTYPE values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// LINKTYPE_ETHERNET (1): `tcpdump -i lo` or any Ethernet interface.
    Ethernet,
    /// LINKTYPE_LINUX_SLL (113): `tcpdump -i any` before tcpdump 4.99.
    LinuxSll,
    /// LINKTYPE_LINUX_SLL2 (276): `tcpdump -i any` since tcpdump 4.99.
    LinuxSll2,
    /// LINKTYPE_RAW (101) and LINKTYPE_IPV4 / IPV6 (228, 229): bare IP.
    Ip,
}

impl Link {
    /// The link layer of a pcap LINKTYPE number, if it is one of these.
    pub fn from_linktype(linktype: u32) -> Option<Link> {
        match linktype {
            1 => Some(Link::Ethernet),
            113 => Some(Link::LinuxSll),
            276 => Some(Link::LinuxSll2),
            101 | 228 | 229 => Some(Link::Ip),
            _ => None,
        }
    }
}

/// The transport protocol of a [`Segment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// `udp` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// A UDP datagram or TCP segment found in a captured packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<'a> {
    pub transport: Transport,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: &'a [u8],
}

/// A UDP datagram found in a captured packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: &'a [u8],
}

/// The UDP datagram or TCP segment a captured packet carries, if any (IPv4
/// or IPv6, not fragmented). Total: any bytes give a segment or `None`.
pub fn segment(link: Link, packet: &[u8]) -> Option<Segment<'_>> {
    let sliced = match link {
        Link::Ethernet => SlicedPacket::from_ethernet(packet),
        Link::LinuxSll => SlicedPacket::from_linux_sll(packet),
        Link::LinuxSll2 => {
            let (header, rest) = packet.split_at_checked(SLL2_HEADER_LEN)?;
            SlicedPacket::from_ether_type(
                EtherType(u16::from_be_bytes([header[0], header[1]])),
                rest,
            )
        }
        Link::Ip => SlicedPacket::from_ip(packet),
    }
    .ok()?;
    let (src, dst, fragmented): (IpAddr, IpAddr, bool) = match sliced.net? {
        NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.payload().fragmented,
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.payload().fragmented,
        ),
        NetSlice::Arp(_) => return None,
    };
    if fragmented {
        return None;
    }
    match sliced.transport? {
        TransportSlice::Udp(udp) => Some(Segment {
            transport: Transport::Udp,
            src: SocketAddr::new(src, udp.source_port()),
            dst: SocketAddr::new(dst, udp.destination_port()),
            payload: udp.payload(),
        }),
        TransportSlice::Tcp(tcp) => Some(Segment {
            transport: Transport::Tcp,
            src: SocketAddr::new(src, tcp.source_port()),
            dst: SocketAddr::new(dst, tcp.destination_port()),
            payload: tcp.payload(),
        }),
        _ => None,
    }
}

/// The UDP datagram a captured packet carries, if any (IPv4 or IPv6, not
/// fragmented). Total: any bytes give a datagram or `None`.
pub fn udp_payload(link: Link, packet: &[u8]) -> Option<Udp<'_>> {
    let s = segment(link, packet)?;
    (s.transport == Transport::Udp).then_some(Udp {
        src: s.src,
        dst: s.dst,
        payload: s.payload,
    })
}

/// A packet of a capture file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedPacket {
    /// Its number as Wireshark counts it (from 1).
    pub frame: u64,
    /// When it was captured (since the Unix epoch).
    pub time: std::time::Duration,
    /// Its link layer, if one of those [`Link`] knows.
    pub link: Option<Link>,
    pub data: Vec<u8>,
}

/// A capture file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {message}")]
    Format { what: String, message: String },
}

/// Calls `each` for every packet of a pcap or pcapng file, in file order,
/// numbered from 1 as Wireshark does.
pub fn read_capture(
    path: &std::path::Path,
    mut each: impl FnMut(CapturedPacket),
) -> Result<(), CaptureError> {
    use pcap_file::pcap::PcapReader;
    use pcap_file::pcapng::{Block, PcapNgReader};
    use std::io::Read as _;
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source: std::io::Error| CaptureError::Io { what, source }
    };
    let fmt = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |e: pcap_file::PcapError| CaptureError::Format {
            what,
            message: e.to_string(),
        }
    };
    let file = std::fs::File::open(path).map_err(io("opening"))?;
    let mut file = std::io::BufReader::new(file);
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(io("reading the magic of"))?;
    let chained = std::io::Cursor::new(magic).chain(file);
    let mut frame = 0u64;
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut reader = PcapNgReader::new(chained).map_err(fmt("reading the header of"))?;
        while let Some(block) = reader.next_block() {
            let block = block.map_err(fmt("reading a block of"))?;
            let (interface, time, data) = match block {
                Block::EnhancedPacket(p) => (p.interface_id, p.timestamp, p.data.into_owned()),
                Block::SimplePacket(p) => (0, std::time::Duration::ZERO, p.data.into_owned()),
                Block::Packet(p) => (
                    u32::from(p.interface_id),
                    std::time::Duration::from_micros(p.timestamp),
                    p.data.into_owned(),
                ),
                _ => continue,
            };
            frame += 1;
            let link = usize::try_from(interface)
                .ok()
                .and_then(|i| reader.interfaces().get(i))
                .and_then(|i| Link::from_linktype(u32::from(i.linktype)));
            each(CapturedPacket {
                frame,
                time,
                link,
                data,
            });
        }
    } else {
        let mut reader = PcapReader::new(chained).map_err(fmt("reading the header of"))?;
        let link = Link::from_linktype(u32::from(reader.header().datalink));
        while let Some(packet) = reader.next_packet() {
            let packet = packet.map_err(fmt("reading a packet of"))?;
            frame += 1;
            each(CapturedPacket {
                frame,
                time: packet.timestamp,
                link,
                data: packet.data.into_owned(),
            });
        }
    }
    Ok(())
}

/// One call direction being followed through a capture.
struct Follow {
    logged: CallDirection,
    opener: Opener,
    window: ReplayWindow,
}

/// A datagram one of the logged directions authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    pub call_id: [u8; CALL_ID_LEN],
    pub direction: Direction,
    /// The full packet index it was sealed at.
    pub index: u64,
    pub function: Function,
    pub plaintext: Vec<u8>,
}

impl Decrypted {
    /// A voice frame's frame number and Opus packet (`None` for the other
    /// functions and for a `Data` plaintext too short for its number).
    pub fn media_frame(&self) -> Option<(u16, &[u8])> {
        (self.function == Function::Data)
            .then(|| decode_media_frame(&self.plaintext).ok())
            .flatten()
    }

    /// A probe's or probe reply's clock (ms, the sender's).
    pub fn probe_clock(&self) -> Option<u64> {
        matches!(self.function, Function::Probe | Function::ProbeReply)
            .then(|| <[u8; 8]>::try_from(self.plaintext.as_slice()).ok())
            .flatten()
            .map(u64::from_be_bytes)
    }
}

/// Follows every direction of a key log through a capture, in capture order.
pub struct Decryptor {
    follows: Vec<Follow>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("directions", &self.follows.len())
            .finish_non_exhaustive()
    }
}

impl Decryptor {
    /// A decryptor for the logged call directions.
    pub fn new(directions: Vec<CallDirection>) -> Self {
        let follows = directions
            .into_iter()
            .map(|logged| Follow {
                opener: Opener::new(&logged.keys),
                window: ReplayWindow::new(),
                logged,
            })
            .collect();
        Self {
            follows,
            buf: Vec::new(),
        }
    }

    /// Opens `payload` (one UDP payload) if one of the directions
    /// authenticates it; relay binds and anything else give `None`.
    pub fn open(&mut self, payload: &[u8]) -> Option<Decrypted> {
        let (header, _) = som::Header::decode(payload).ok()?;
        for follow in &mut self.follows {
            let Ok(estimate) = follow.window.estimate(header.msg_id) else {
                continue;
            };
            // Before the first datagram of a direction: its first index if
            // the log has it, else the message id or one rollover above it
            // (as a receiver tries).
            let tries: Vec<u64> = match (follow.window.highest(), follow.logged.first_index) {
                (Some(_), _) => vec![estimate],
                (None, Some(first)) => {
                    let near = (first & !0xffff) | u64::from(header.msg_id);
                    vec![near, near + 0x1_0000]
                }
                (None, None) => vec![estimate, estimate + 0x1_0000],
            };
            for index in tries {
                if follow.opener.open_at(payload, index, &mut self.buf).is_ok() {
                    follow.window.accept(index);
                    return Some(Decrypted {
                        call_id: follow.logged.call_id,
                        direction: follow.logged.direction,
                        index,
                        function: header.function,
                        plaintext: self.buf.clone(),
                    });
                }
            }
        }
        None
    }
}

/// The text listing `natter-decrypt` writes: a comment line, then one line
/// per decrypted datagram,
///
/// ```text
/// FRAME SRC DST CALL_ID DIRECTION INDEX FUNCTION PLAINTEXT_HEX [# what it says]
/// ```
///
/// `FRAME` is the packet's number in the capture as Wireshark counts it
/// (from 1). The dissector reads the first eight fields (preference
/// `natter.clear_file`); the comment is for people.
#[derive(Debug)]
pub struct Listing;

impl Listing {
    /// The first line of a listing.
    pub const HEADER: &str = "# frame src dst call_id direction index function plaintext";

    /// The listing line of one decrypted datagram.
    pub fn line(frame: u64, udp: &Udp<'_>, d: &Decrypted) -> String {
        let mut line = format!(
            "{frame} {} {} {} {} {} {:?} {}",
            udp.src,
            udp.dst,
            hex::encode(d.call_id),
            d.direction.as_str(),
            d.index,
            d.function,
            hex::encode(&d.plaintext)
        );
        if let Some((number, opus)) = d.media_frame() {
            let _ = write!(line, " # frame_number={number} opus_bytes={}", opus.len());
            if let Some(toc) = opus.first() {
                let _ = write!(
                    line,
                    " toc=0x{toc:02x} config={} stereo={} code={}",
                    toc >> 3,
                    (toc >> 2) & 1,
                    toc & 3
                );
            }
        } else if let Some(clock) = d.probe_clock() {
            let _ = write!(line, " # clock_ms={clock}");
        }
        line
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use natter_proto::media::{Sealer, encode_media_frame};

    fn keys(byte: u8) -> DirectionKeys {
        DirectionKeys {
            key: [byte; KEY_LEN],
            iv: [byte ^ 0x55; IV_LEN],
        }
    }

    fn line(dir: &str, k: &DirectionKeys, first: &str) -> String {
        format!(
            "{CALL_LABEL} {} {dir} {} {} {first}",
            "ab".repeat(16),
            hex::encode(k.key),
            hex::encode(k.iv)
        )
    }

    #[test]
    fn the_key_log_keeps_call_lines_merges_both_ends_and_skips_tls_lines() {
        let c2s = keys(1);
        let s2c = keys(2);
        let log = [
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET 00 11".to_owned(),
            line("c2s", &c2s, "77"),
            line("s2c", &s2c, "-"),
            line("s2c", &s2c, "9000"),
            line("c2s", &c2s, "-"),
        ]
        .join("\n");
        let dirs = parse_key_log(&log).unwrap();
        assert_eq!(dirs.len(), 2);
        assert_eq!(dirs[0].direction, Direction::C2s);
        assert_eq!(dirs[0].first_index, Some(77));
        assert_eq!(dirs[1].keys, s2c);
        assert_eq!(dirs[1].first_index, Some(9000));
    }

    #[test]
    fn a_bad_call_line_is_a_clear_error_with_its_line_number() {
        let bad = [
            format!("{CALL_LABEL} ab c2s"),
            line("up", &keys(1), "-"),
            line("c2s", &keys(1), "x"),
            line("c2s", &keys(1), "-").replace("abab", "zz"),
        ];
        for text in bad {
            let text = format!("# comment\n{text}");
            let err = parse_key_log(&text).unwrap_err();
            assert_eq!(err.line, 2, "{err}");
        }
        let conflict = format!(
            "{}\n{}",
            line("c2s", &keys(1), "-"),
            line("c2s", &keys(3), "-")
        );
        assert_eq!(parse_key_log(&conflict).unwrap_err().line, 2);
    }

    #[test]
    fn every_direction_is_followed_across_a_rollover_and_other_keys_fail() {
        let c2s = keys(1);
        let s2c = keys(2);
        let mut dec = Decryptor::new(vec![
            CallDirection {
                call_id: [7; CALL_ID_LEN],
                direction: Direction::C2s,
                keys: c2s.clone(),
                first_index: Some(0xfff0),
            },
            CallDirection {
                call_id: [7; CALL_ID_LEN],
                direction: Direction::S2c,
                keys: s2c.clone(),
                first_index: None,
            },
        ]);
        let mut caller = Sealer::new(&c2s, 0x7ff0);
        let mut callee = Sealer::new(&s2c, 3);
        // Skip to just before the caller's first rollover.
        let mut junk = Vec::new();
        while caller.next_index() < 0xfff0 {
            junk.clear();
            caller.seal(Function::Ping, 0, &[], &mut junk).unwrap();
        }
        let mut plain = Vec::new();
        for number in 0..40u16 {
            encode_media_frame(number, &[0x48, 1, 2, 3], &mut plain);
            let mut d = Vec::new();
            let index = caller.seal(Function::Data, 5, &plain, &mut d).unwrap();
            let opened = dec.open(&d).unwrap();
            assert_eq!((opened.direction, opened.index), (Direction::C2s, index));
            assert_eq!(opened.media_frame(), Some((number, &[0x48, 1, 2, 3][..])));
            // A relayed copy of the same datagram opens again.
            assert_eq!(dec.open(&d).unwrap().index, index);
            let mut p = Vec::new();
            callee
                .seal(Function::Probe, 1, &u64::from(number).to_be_bytes(), &mut p)
                .unwrap();
            let opened = dec.open(&p).unwrap();
            assert_eq!(opened.direction, Direction::S2c);
            assert_eq!(opened.probe_clock(), Some(u64::from(number)));
        }
        let mut stranger = Sealer::new(&keys(9), 100);
        let mut d = Vec::new();
        stranger.seal(Function::Data, 0, &[0; 10], &mut d).unwrap();
        assert_eq!(dec.open(&d), None);
        assert_eq!(dec.open(b"NRLY"), None);
    }

    #[test]
    fn tcp_segments_are_found_and_are_not_udp_payloads() {
        let builder = etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(4000, 443, 7, 1024);
        let mut ip = Vec::new();
        builder.write(&mut ip, b"record").unwrap();
        let s = segment(Link::Ip, &ip).unwrap();
        assert_eq!(s.transport, Transport::Tcp);
        assert_eq!(s.dst, "10.0.0.2:443".parse().unwrap());
        assert_eq!(s.payload, b"record");
        assert_eq!(udp_payload(Link::Ip, &ip), None);
        for n in 0..ip.len() {
            let _ = segment(Link::Ip, &ip[..n]);
        }
    }

    #[test]
    fn udp_payloads_are_found_in_ethernet_cooked_and_raw_ip_and_garbage_is_none() {
        let builder =
            etherparse::PacketBuilder::ipv4([127, 0, 0, 1], [127, 0, 0, 2], 64).udp(4000, 5000);
        let mut ip = Vec::new();
        builder.write(&mut ip, b"hello").unwrap();
        let mut eth = vec![0u8; 12];
        eth.extend_from_slice(&[0x08, 0x00]);
        eth.extend_from_slice(&ip);
        let mut sll2 = vec![0x08, 0x00];
        sll2.extend_from_slice(&[0; SLL2_HEADER_LEN - 2]);
        sll2.extend_from_slice(&ip);
        for (link, packet) in [
            (Link::Ip, &ip),
            (Link::Ethernet, &eth),
            (Link::LinuxSll2, &sll2),
        ] {
            let udp = udp_payload(link, packet).unwrap();
            assert_eq!(udp.src, "127.0.0.1:4000".parse().unwrap());
            assert_eq!(udp.dst, "127.0.0.2:5000".parse().unwrap());
            assert_eq!(udp.payload, b"hello");
        }
        for n in 0..ip.len() {
            let _ = udp_payload(Link::Ip, &ip[..n]);
            let _ = udp_payload(Link::Ethernet, &eth[..n]);
            let _ = udp_payload(Link::LinuxSll, &eth[..n]);
            let _ = udp_payload(Link::LinuxSll2, &sll2[..n]);
        }
    }
}
