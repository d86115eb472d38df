//! The userspace impairment link ("wire"): a forwarding process between two
//! interfaces of a lab namespace that adds delay, jitter (hence reordering)
//! and bursty loss, for a kernel without netem.
//!
//! ```text
//!  router ns          wire ns                      internet ns
//!  wan0 <--veth--> pr<N>x<G>   [natter-interop-tests   b0 <--veth--> q<N>x<G> -- br0
//!                              probe-wire: two AF_PACKET
//!                              sockets, one Link per direction]
//! ```
//!
//! [`Lab::set_impairment`](crate::lab::Lab::set_impairment) moves the
//! router's bridge port into a namespace of its own and gives the bridge a
//! new port whose peer is there too; this process copies every Ethernet
//! frame from one side to the other (layer 2: the router, its address, its
//! routes and its nftables NAT rules stay exactly as they were). Decisions
//! (loss, release time) come from [`crate::impair::Link`]; this module only
//! moves frames and keeps time.
//!
//! Frames that the kernel handed over with a partial (offloaded) UDP/TCP
//! checksum are completed here ([`complete_l4_checksum`]): a frame written
//! to a packet socket is checked by the receiver as it is.
//!
//! Also the two helpers of the wire's test, a paced UDP sender and a sink
//! that records one-way delays (`probe-udp-send`, `probe-udp-sink`).

use std::io;
use std::net::{SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pnet_datalink::{Channel, Config, DataLinkReceiver, DataLinkSender};
use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};
use crate::impair::{Link, LinkParams, LinkStats};

/// Largest frame forwarded: an Ethernet frame of a 1500-byte MTU.
const MAX_FRAME: usize = 1514;
/// Frames waiting between the readers and the scheduler.
const INBOX: usize = 4096;

/// What the wire process is told.
#[derive(Debug, Clone)]
pub struct WireArgs {
    /// One side's interface (the router's link).
    pub a: String,
    /// The other side's interface (the internet's link).
    pub b: String,
    /// Impairment of each direction.
    pub params: LinkParams,
    /// RNG seed (a to b uses `seed`, b to a `seed + 1`).
    pub seed: u64,
    /// Frames held per direction at most.
    pub capacity: usize,
}

/// Counters of the process besides the links' own.
#[derive(Debug, Default)]
struct Extra {
    inbox_full: AtomicU64,
    oversize: AtomicU64,
    send_errors: AtomicU64,
}

fn open(name: &str) -> Result<(Box<dyn DataLinkSender>, Box<dyn DataLinkReceiver>)> {
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| LabError::Other(format!("wire: no interface `{name}` here")))?;
    let cfg = Config {
        // a whole GSO frame would not fit an MTU; read it whole to count it
        read_buffer_size: 65_536 + 64,
        write_buffer_size: 65_536 + 64,
        promiscuous: true,
        ..Config::default()
    };
    match pnet_datalink::channel(&iface, cfg) {
        Ok(Channel::Ethernet(tx, rx)) => Ok((tx, rx)),
        Ok(_) => Err(LabError::Other(format!(
            "wire: `{name}` is not an Ethernet channel"
        ))),
        Err(e) => Err(LabError::io(format!("wire: packet socket on `{name}`"), e)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    AtoB,
    BtoA,
}

fn reader(
    mut rx: Box<dyn DataLinkReceiver>,
    dir: Dir,
    epoch: Instant,
    inbox: mpsc::SyncSender<(Dir, u64, Vec<u8>)>,
    extra: Arc<Extra>,
) {
    loop {
        let frame = match rx.next() {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => continue,
            Err(e) => {
                eprintln!("wire: read error {dir:?}: {e}");
                return;
            }
        };
        if frame.len() > MAX_FRAME {
            extra.oversize.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let t = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        match inbox.try_send((dir, t, frame.to_vec())) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                extra.inbox_full.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return,
        }
    }
}

/// One line of counters (printed every second while they change).
pub fn stats_line(ab: &LinkStats, ba: &LinkStats, inbox_full: u64, oversize: u64) -> String {
    let one = |s: &LinkStats| {
        format!(
            "offered={} released={} lost={} overflow={} reordered={}",
            s.offered, s.released, s.lost, s.overflow, s.reordered
        )
    };
    format!(
        "wire stats a->b {} | b->a {} | inbox_full={inbox_full} oversize={oversize}",
        one(ab),
        one(ba)
    )
}

/// Runs the wire until killed (or a reader fails). Prints `wire up` once
/// both packet sockets are open, then a stats line each second that
/// something changed.
pub fn run_wire(args: &WireArgs) -> Result<()> {
    let mut ab: Link<Vec<u8>> =
        Link::new(args.params, args.capacity, args.seed).map_err(LabError::Other)?;
    let mut ba: Link<Vec<u8>> = Link::new(args.params, args.capacity, args.seed.wrapping_add(1))
        .map_err(LabError::Other)?;
    let (mut tx_a, rx_a) = open(&args.a)?;
    let (mut tx_b, rx_b) = open(&args.b)?;
    let epoch = Instant::now();
    let extra = Arc::new(Extra::default());
    let (inbox_tx, inbox) = mpsc::sync_channel(INBOX);
    for (rx, dir) in [(rx_a, Dir::AtoB), (rx_b, Dir::BtoA)] {
        let (t, x) = (inbox_tx.clone(), extra.clone());
        thread::Builder::new()
            .name(format!("wire-{dir:?}"))
            .spawn(move || reader(rx, dir, epoch, t, x))
            .map_err(|e| LabError::io("wire: spawn reader", e))?;
    }
    drop(inbox_tx);
    println!(
        "wire up: {} <-> {}, {:?}, seed {}",
        args.a, args.b, args.params, args.seed
    );
    let now_us = || u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
    let mut last_print = Instant::now();
    let mut last_line = String::new();
    loop {
        let t = now_us();
        for (link, tx) in [(&mut ab, &mut tx_b), (&mut ba, &mut tx_a)] {
            while let Some(mut f) = link.pop_due(t) {
                complete_l4_checksum(&mut f);
                if !matches!(tx.send_to(&f, None), Some(Ok(()))) {
                    extra.send_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let line = format!(
                "{} send_errors={}",
                stats_line(
                    &ab.stats(),
                    &ba.stats(),
                    extra.inbox_full.load(Ordering::Relaxed),
                    extra.oversize.load(Ordering::Relaxed)
                ),
                extra.send_errors.load(Ordering::Relaxed)
            );
            if line != last_line {
                println!("{line}");
                last_line = line;
            }
        }
        let next = [ab.next_due(), ba.next_due()].into_iter().flatten().min();
        let wait_us = next.map_or(200_000, |n| n.saturating_sub(now_us()).min(200_000));
        match inbox.recv_timeout(Duration::from_micros(wait_us)) {
            Ok((dir, at, frame)) => {
                let link = if dir == Dir::AtoB { &mut ab } else { &mut ba };
                link.offer(at, frame);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(LabError::Other("wire: both readers stopped".into()));
            }
        }
    }
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

/// Completes the UDP or TCP checksum of an IPv4 frame (Ethernet II,
/// unfragmented), whatever the field held: a frame the sending kernel left
/// to checksum offload carries only the pseudo-header sum there. A UDP
/// checksum of 0 (none) stays 0. Returns whether the frame was one it
/// handles. Anything else is left alone.
pub fn complete_l4_checksum(frame: &mut [u8]) -> bool {
    if frame.len() < 14 + 20 || be16(frame, 12) != 0x0800 {
        return false;
    }
    let ip = &mut frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(ip, 2));
    if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() {
        return false;
    }
    // fragments (MF or an offset) carry no whole segment
    if be16(ip, 6) & 0x3fff != 0 {
        return false;
    }
    let proto = ip[9];
    let off = match proto {
        17 => 6,
        6 => 16,
        _ => return false,
    };
    let l4_len = total - ihl;
    if l4_len < off + 2 {
        return false;
    }
    if proto == 17 && be16(ip, ihl + 6) == 0 {
        return true;
    }
    ip[ihl + off] = 0;
    ip[ihl + off + 1] = 0;
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += u32::from(w);
        }
    };
    add(&ip[12..20]);
    add(&[0, proto]);
    add(&(l4_len as u16).to_be_bytes());
    add(&ip[ihl..total]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut c = !(sum as u16);
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    ip[ihl + off..ihl + off + 2].copy_from_slice(&c.to_be_bytes());
    true
}

fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Sends `count` UDP datagrams to `to`, one each `interval`, on an absolute
/// schedule. Each carries its sequence number and the wall-clock send time
/// (the lab's namespaces share one clock). Returns the number sent.
pub fn udp_send(to: SocketAddrV4, count: u32, interval: Duration) -> io::Result<u32> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    let start = Instant::now();
    let mut buf = [0u8; 64];
    for i in 0..count {
        let due = start + interval * i;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
        buf[..4].copy_from_slice(&i.to_be_bytes());
        buf[4..12].copy_from_slice(&unix_us().to_be_bytes());
        sock.send_to(&buf, to)?;
    }
    Ok(count)
}

/// What [`udp_sink`] heard, in arrival order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SinkReport {
    /// `(sequence number, one-way delay in microseconds)` per datagram.
    pub received: Vec<(u32, i64)>,
    /// Datagrams too short to carry a sequence number and a time.
    pub malformed: u64,
}

/// Receives on `bind` until `count` datagrams arrived, `idle` passed after
/// the last one, or `max` passed in all.
pub fn udp_sink(
    bind: SocketAddrV4,
    count: u32,
    idle: Duration,
    max: Duration,
) -> io::Result<SinkReport> {
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    println!("sink up on {bind}");
    let start = Instant::now();
    let mut last = Instant::now();
    let mut rep = SinkReport::default();
    let mut buf = [0u8; 2048];
    while rep.received.len() < count as usize && start.elapsed() < max {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) if n >= 12 => {
                let now = unix_us();
                let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                let mut t = [0u8; 8];
                t.copy_from_slice(&buf[4..12]);
                rep.received.push((seq, now - i64::from_be_bytes(t)));
                last = Instant::now();
            }
            Ok(_) => rep.malformed += 1,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if !rep.received.is_empty() && last.elapsed() >= idle {
                    break;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(rep)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP frame from 10.0.0.1:1234 to 10.0.0.2:5678.
    fn udp_frame(payload: &[u8], csum: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + payload.len()) as u16;
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&ip);
        let ulen = (8 + payload.len()) as u16;
        f.extend_from_slice(&1234u16.to_be_bytes());
        f.extend_from_slice(&5678u16.to_be_bytes());
        f.extend_from_slice(&ulen.to_be_bytes());
        f.extend_from_slice(&csum.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The one's-complement sum over pseudo-header and segment of a correct
    /// checksum is 0xffff.
    fn verifies(f: &[u8]) -> bool {
        let ip = &f[14..];
        let total = usize::from(be16(ip, 2));
        let mut sum: u32 = 0;
        let mut words = ip[12..20].to_vec();
        words.extend_from_slice(&[0, ip[9]]);
        words.extend_from_slice(&((total - 20) as u16).to_be_bytes());
        words.extend_from_slice(&ip[20..total]);
        if words.len() % 2 == 1 {
            words.push(0);
        }
        for c in words.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }

    #[test]
    fn completes_a_partial_udp_checksum_and_keeps_a_good_one() {
        // odd length exercises the padding
        let mut f = udp_frame(b"hello, wire", 0x1234);
        assert!(!verifies(&f));
        assert!(complete_l4_checksum(&mut f));
        assert!(verifies(&f));
        let good = f.clone();
        assert!(complete_l4_checksum(&mut f));
        assert_eq!(f, good);
    }

    #[test]
    fn leaves_zero_udp_checksum_fragments_and_other_frames_alone() {
        let mut f = udp_frame(b"x", 0);
        let before = f.clone();
        assert!(complete_l4_checksum(&mut f));
        assert_eq!(f, before);
        let mut frag = udp_frame(b"abc", 0x1111);
        frag[14 + 6] = 0x20; // MF
        let before = frag.clone();
        assert!(!complete_l4_checksum(&mut frag));
        assert_eq!(frag, before);
        let mut arp = vec![0u8; 42];
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert!(!complete_l4_checksum(&mut arp));
        // truncated: a total length past the frame
        let mut short = udp_frame(b"abcdef", 0x1111);
        short.truncate(40);
        assert!(!complete_l4_checksum(&mut short));
    }

    #[test]
    fn completes_a_tcp_checksum() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![
            0x45, 0, 0, 44, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip[2..4].copy_from_slice(&44u16.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut tcp = vec![0u8; 24];
        tcp[12] = 0x50;
        tcp[16] = 0xab;
        tcp[20..24].copy_from_slice(b"data");
        f.extend_from_slice(&tcp);
        assert!(complete_l4_checksum(&mut f));
        assert!(verifies(&f));
    }
}
