//! The supernode core, `natter_supernode::core::Node`, fed what peers and
//! clients control: envelopes on overlay links (gossip, directory stores and
//! lookups, forwarded chat and call signals: unauthenticated today, issue
//! 13), a link's first membership, envelopes on client sessions (join,
//! chat, presence, calls), sessions and links coming and going, and time.
//! Envelopes are built field by field and pass the stream decoder's checks
//! first, as the shell hands them over. Total; the output of one step is
//! bounded. (Whether every envelope it sends fits one frame is issue 14
//! item 1, not asserted here yet.)
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use natter_fuzz::{ISSUER, NOW_S};
use natter_proto::PROTOCOL_VERSION;
use natter_proto::messages::{Envelope, GossipMembership};
use natter_supernode::Config;
use natter_supernode::core::{Carrier, LinkOrigin, Node, NodeConfig, NodeCredentials, Now, Output};

#[derive(Debug, Arbitrary)]
enum Op {
    LinkUp {
        link: u8,
        first: GossipMembership,
        dialed: bool,
    },
    Link {
        link: u8,
        envelope: Envelope,
    },
    LinkDown {
        link: u8,
    },
    DialFailed {
        link: u8,
    },
    SessionOpen {
        session: u8,
        tcp: bool,
    },
    Session {
        session: u8,
        envelope: Envelope,
    },
    SessionClosed {
        session: u8,
    },
    Tick {
        ms: u16,
    },
}

fn remote(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, i], 7000 + u16::from(i)))
}

/// What the stream decoder lets through: this version, a body.
fn decoded(mut envelope: Envelope) -> Option<Envelope> {
    envelope.version = PROTOCOL_VERSION;
    envelope.body.as_ref()?;
    Some(envelope)
}

fn drain(node: &mut Node) {
    let mut outputs = 0;
    while let Some(output) = node.poll_output() {
        outputs += 1;
        assert!(outputs <= 100_000, "one step produced unbounded output");
        if let Output::ToSession(_, e) | Output::ToLink(_, e) | Output::Dial { hello: e, .. } =
            &output
        {
            let _ = natter_proto::frame::to_frame(e);
        }
    }
}

/// The fuzzed node's key and supernode certificate.
static SN_CREDENTIALS: std::sync::LazyLock<NodeCredentials> = std::sync::LazyLock::new(|| {
    let key = <rsa::RsaPrivateKey as rsa::pkcs8::DecodePrivateKey>::from_pkcs8_pem(include_str!(
        "../../proto/tests/vectors/issuer.pem"
    ))
    .expect("the published test key parses");
    let addr: SocketAddr = "192.0.2.10:7000".parse().expect("address");
    let certificate = ISSUER.issue(
        &mut rsa::rand_core::OsRng,
        &natter_proto::cert::Subject::Supernode {
            key: &key.to_public_key(),
            addrs: natter_proto::cert::SupernodeAddrs {
                quic: addr,
                reflector: natter_supernode::reflector_of(addr).expect("reflector"),
                tcp: None,
            },
        },
        8,
        NOW_S - 100,
        NOW_S + 86_400,
    );
    NodeCredentials { key, certificate }
});

fuzz_target!(|ops: Vec<Op>| {
    let addr: SocketAddr = "192.0.2.10:7000".parse().expect("address");
    let config = Config::new(addr, ISSUER.public_key());
    let reflector = natter_supernode::reflector_of(addr).expect("reflector");
    // Certified (by the test issuer, for its own key: no key generation
    // per run), so joins get past the challenge.
    let credentials = SN_CREDENTIALS.clone();
    let config = NodeConfig::from_config(
        &config,
        [0x11; 16],
        Some(credentials),
        addr,
        addr,
        None,
        reflector,
        1,
    );
    let base = Instant::now();
    let mut t = Duration::ZERO;
    let now = |t: Duration| Now {
        mono: base + t,
        unix_ms: NOW_S * 1000 + t.as_millis() as i64,
    };
    let mut node = Node::new(config, [7; 32], now(t));
    drain(&mut node);
    for op in ops {
        match op {
            Op::LinkUp {
                link,
                first,
                dialed,
            } => {
                let origin = if dialed {
                    LinkOrigin::Dialed(remote(link))
                } else {
                    LinkOrigin::Accepted
                };
                let peer = natter_supernode::node_id(&first.sender_id).unwrap_or_default();
                node.handle_link_up(
                    u64::from(link),
                    remote(link),
                    peer,
                    None,
                    &first,
                    origin,
                    now(t),
                );
            }
            Op::Link { link, envelope } => {
                if let Some(envelope) = decoded(envelope) {
                    node.handle_link(u64::from(link), envelope, now(t));
                }
            }
            Op::LinkDown { link } => node.handle_link_down(u64::from(link), now(t)),
            Op::DialFailed { link } => node.handle_dial_failed(remote(link), now(t)),
            Op::SessionOpen { session, tcp } => {
                let carrier = if tcp { Carrier::Tcp } else { Carrier::Quic };
                node.handle_session_open(
                    u64::from(session),
                    remote(session),
                    carrier,
                    [session; 32],
                    now(t),
                );
            }
            Op::Session { session, envelope } => {
                if let Some(envelope) = decoded(envelope) {
                    node.handle_session(u64::from(session), envelope, now(t));
                }
            }
            Op::SessionClosed { session } => node.handle_session_closed(u64::from(session), now(t)),
            Op::Tick { ms } => {
                t += Duration::from_millis(u64::from(ms) * 16);
                node.handle_timeout(now(t));
            }
        }
        drain(&mut node);
    }
});
