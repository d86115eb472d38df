//! The bare forwarder: the practical limit of one core, measured with the
//! same load generator as the supernode's relay (`NATTER_RELAY_TARGET=bare`).
//!
//! It does the least a relay can: one UDP socket, a batch of datagrams per
//! `recvmmsg` (quinn-udp, the relay's receive), the sender's side read from
//! the datagram itself (the load generator writes it at bytes 3..7), the
//! address of the other side of the call looked up in a vector, and one
//! `sendmmsg` per batch (`natter_supernode::send_many`, the relay's send). No
//! binds, no tokens, no cookies, no rate limits, no counters, no lock: what
//! is left of the supernode's cost per packet once all of that is gone. The
//! difference between the two in one run is what the relay's own work costs.
//!
//! It runs as a child process (`relay --bare-forwarder`, pinned to the
//! server core like the supernode) and prints `bare forwarder on ADDR`.

use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};

use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};

/// The argument that makes the bench binary the forwarder.
pub const ARG: &str = "--bare-forwarder";

/// Runs the forwarder until killed.
pub fn run(datagram_len: usize) -> ! {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the bare forwarder");
    let state = UdpSocketState::new(UdpSockRef::from(&socket)).expect("quinn-udp state");
    let _ = state.set_recv_buffer_size(UdpSockRef::from(&socket), 32 << 20);
    let _ = state.set_send_buffer_size(UdpSockRef::from(&socket), 8 << 20);
    // Blocking: the thread sleeps in recvmmsg when there is nothing to do.
    socket.set_nonblocking(false).expect("blocking socket");
    println!(
        "bare forwarder on {}",
        socket.local_addr().expect("local address")
    );
    let batch = natter_supernode::UDP_BATCH;
    let mut bufs = vec![[0u8; 2048]; batch];
    let mut meta = vec![RecvMeta::default(); batch];
    // Each side's address, by side number, learnt from its datagrams.
    let mut sides: Vec<Option<SocketAddr>> = Vec::new();
    let mut out: Vec<(usize, usize, SocketAddr)> = Vec::with_capacity(2 * batch);
    let mut addrs = Vec::with_capacity(batch);
    loop {
        let n = {
            let mut slices: Vec<IoSliceMut<'_>> = bufs
                .iter_mut()
                .map(|b| IoSliceMut::new(&mut b[..]))
                .collect();
            match state.recv(UdpSockRef::from(&socket), &mut slices, &mut meta) {
                Ok(n) => n,
                Err(_) => continue,
            }
        };
        out.clear();
        for (i, m) in meta.iter().enumerate().take(n) {
            let stride = if m.stride == 0 { m.len } else { m.stride }.max(1);
            for start in (0..m.len).step_by(stride) {
                let end = (start + stride).min(m.len);
                if end - start != datagram_len {
                    continue;
                }
                let side = u32::from_be_bytes(bufs[i][start + 3..start + 7].try_into().unwrap());
                let side = side as usize;
                if side >= 1 << 20 {
                    continue;
                }
                if sides.len() <= (side | 1) {
                    sides.resize((side | 1) + 1, None);
                }
                sides[side] = Some(m.addr);
                if let Some(to) = sides[side ^ 1] {
                    out.push((i, start, to));
                }
            }
        }
        let datagrams = out
            .iter()
            .map(|&(i, start, to)| (&bufs[i][start..start + datagram_len], to));
        natter_supernode::send_many(&socket, datagrams, &mut addrs);
    }
}
