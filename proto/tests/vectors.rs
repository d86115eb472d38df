//! The test vectors published in docs/PROTOCOL.md are what this code computes.
//!
//! To print them (after a deliberate protocol change):
//! `NATTER_PRINT_VECTORS=1 cargo test -p natter-proto --test vectors -- --nocapture`

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use natter_proto::binding;
use natter_proto::cert::{self, Issuer};
use natter_proto::frame::to_frame;
use natter_proto::handshake::{
    CallNames, KeySchedule, Role, share_signed_message, signal_mac_message, transcript_hash,
};
use natter_proto::media::{Sealer, nonce};
use natter_proto::messages::{Envelope, LoginRequest, Ping, envelope};
use natter_proto::replay::ReplayWindow;
use natter_proto::som::Function;
use x25519_dalek::{PublicKey, StaticSecret};

fn h(bytes: impl AsRef<[u8]>) -> String {
    hex::encode(bytes)
}

fn arr<const N: usize>(hex_str: &str) -> [u8; N] {
    hex::decode(hex_str).unwrap().try_into().unwrap()
}

/// Every vector, computed from its inputs.
fn compute() -> Vec<(&'static str, String)> {
    let mut v = Vec::new();

    // --- SoM datagram sealing
    let key: [u8; 32] = std::array::from_fn(|i| i as u8);
    let iv: [u8; 12] = std::array::from_fn(|i| 0xa0 + i as u8);
    let index: u64 = 0x0001_2345;
    let plaintext = b"natter voice frame";
    v.push(("som.key", h(key)));
    v.push(("som.iv", h(iv)));
    v.push(("som.index", format!("{index:016x}")));
    v.push(("som.random_bits", "05".into()));
    v.push(("som.plaintext", h(plaintext)));
    v.push(("som.nonce", h(nonce(&iv, index))));
    let keys = natter_proto::handshake::DirectionKeys { key, iv };
    // A sealer positioned at `index`: start at its low 16 bits, seal one
    // rollover's worth of pings, then the vector's datagram.
    let mut sealer = Sealer::new(&keys, 0x2345);
    let mut datagram = Vec::new();
    while sealer.next_index() < index {
        datagram.clear();
        sealer.seal(Function::Ping, 0, b"", &mut datagram).unwrap();
    }
    assert_eq!(sealer.next_index(), index);
    datagram.clear();
    sealer
        .seal(Function::Data, 5, plaintext, &mut datagram)
        .unwrap();
    v.push(("som.datagram", h(&datagram)));

    // --- index reconstruction
    let mut window = ReplayWindow::new();
    window.accept(0x1_fff0);
    v.push(("roc.highest_1", format!("{:016x}", 0x1_fff0)));
    v.push(("roc.msg_id_1", "0005".into()));
    v.push((
        "roc.index_1",
        format!("{:016x}", window.estimate(0x0005).unwrap()),
    ));
    let mut window = ReplayWindow::new();
    window.accept(0x2_0003);
    v.push(("roc.highest_2", format!("{:016x}", 0x2_0003)));
    v.push(("roc.msg_id_2", "fffe".into()));
    v.push((
        "roc.index_2",
        format!("{:016x}", window.estimate(0xfffe).unwrap()),
    ));

    // --- key schedule (X25519 keys from RFC 7748 section 6.1)
    let caller_secret: [u8; 32] =
        arr("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    let callee_secret: [u8; 32] =
        arr("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
    let invite_id: [u8; 16] = std::array::from_fn(|i| i as u8);
    let caller_public = PublicKey::from(&StaticSecret::from(caller_secret)).to_bytes();
    let callee_public = PublicKey::from(&StaticSecret::from(callee_secret)).to_bytes();
    let shared = StaticSecret::from(caller_secret)
        .diffie_hellman(&PublicKey::from(callee_public))
        .to_bytes();
    // The certificates in the transcript: the vector certificates below
    // for alice (caller) and bob (callee).
    let issuer = Issuer::new(common::key("issuer"));
    let user_cert = |name: &str| {
        issuer.issue(
            &mut common::blinding_rng(),
            &natter_proto::cert::Subject::User {
                name,
                key: &common::key(name).to_public_key(),
                chat_key: common::TEST_CHAT_KEY,
            },
            1,
            1_800_000_000,
            1_800_086_400,
        )
    };
    let names = CallNames::new("alice", "bob");
    let th = transcript_hash(
        &caller_public,
        &callee_public,
        &user_cert("alice"),
        &user_cert("bob"),
        &names,
    );
    let schedule = KeySchedule::derive(&invite_id, &shared, &th);
    v.push(("kdf.invite_id", h(invite_id)));
    v.push(("kdf.caller_secret", h(caller_secret)));
    v.push(("kdf.callee_secret", h(callee_secret)));
    v.push(("kdf.caller_public", h(caller_public)));
    v.push(("kdf.callee_public", h(callee_public)));
    v.push(("kdf.shared", h(shared)));
    v.push(("kdf.bob_cert_body", h(&user_cert("bob").body)));
    v.push(("kdf.transcript", h(th)));
    v.push(("kdf.c2s_key", h(schedule.c2s.key)));
    v.push(("kdf.s2c_key", h(schedule.s2c.key)));
    v.push(("kdf.c2s_iv", h(schedule.c2s.iv)));
    v.push(("kdf.s2c_iv", h(schedule.s2c.iv)));
    v.push(("kdf.call_id", h(schedule.call_id)));
    v.push(("kdf.signal_key", h(schedule.signal.0)));

    // --- a MACed mid-call signal (bob hangs up) under that signal key
    let mut hangup = natter_proto::messages::CallSignal {
        invite_id: invite_id.to_vec(),
        from: "bob".into(),
        to: "alice".into(),
        kind: Some(natter_proto::messages::call_signal::Kind::Hangup(
            natter_proto::messages::CallHangup { reason: 0 },
        )),
        mac: Vec::new(),
    };
    v.push(("signal.mac_message", h(signal_mac_message(&hangup))));
    schedule.signal.seal(&mut hangup);
    v.push(("signal.mac", h(&hangup.mac)));

    // --- a MACed hold (alice puts the call on hold) under the same key
    let mut hold = natter_proto::messages::CallSignal {
        invite_id: invite_id.to_vec(),
        from: "alice".into(),
        to: "bob".into(),
        kind: Some(natter_proto::messages::call_signal::Kind::Hold(
            natter_proto::messages::CallHold { on: true },
        )),
        mac: Vec::new(),
    };
    v.push(("signal.hold_mac_message", h(signal_mac_message(&hold))));
    schedule.signal.seal(&mut hold);
    v.push(("signal.hold_mac", h(&hold.mac)));
    v.push((
        "signal.hold_encoded",
        h(prost::Message::encode_to_vec(&hold)),
    ));

    // --- conferences (section 3.6): conference id 0xc0 x 16; the roster of
    // the NAT-lab case (alice symmetric, bob open, carol port-restricted),
    // the host the rule elects from it, alice's invitation to bob as the
    // MACed call signal on their leg (the section 6 vector's call).
    {
        use natter_proto::conference::{self, Capabilities, Message, NatClass, Roster};
        let id = [0xc0u8; 16];
        let mut alice = Capabilities::new(NatClass::Symmetric, 2_000, 800);
        alice.paths.insert(
            "bob".into(),
            conference::PathFacts {
                rtt_ms: Some(35),
                reach: conference::Reach::Direct,
            },
        );
        let roster: Roster = [
            ("alice".to_owned(), alice),
            (
                "bob".to_owned(),
                Capabilities::new(NatClass::Open, 1_000, 300),
            ),
            (
                "carol".to_owned(),
                Capabilities::new(NatClass::PortRestricted, 2_000, 900),
            ),
        ]
        .into_iter()
        .collect();
        let encoded = |m: &Message| h(prost::Message::encode_to_vec(&conference::encode(&id, m)));
        let invite = Message::Invite {
            participants: vec!["alice".into(), "bob".into(), "carol".into()],
        };
        v.push(("conference.invite", encoded(&invite)));
        v.push((
            "conference.roster",
            encoded(&Message::Roster(roster.clone())),
        ));
        let elected = conference::elect(&roster).unwrap().to_owned();
        v.push(("conference.elected", h(elected.as_bytes())));
        v.push((
            "conference.host_elected",
            encoded(&Message::HostElected {
                epoch: 1,
                host: elected,
            }),
        ));
        v.push(("conference.leave", encoded(&Message::Leave)));
        v.push((
            "conference.call_invite",
            h(prost::Message::encode_to_vec(
                &natter_proto::messages::CallInvite {
                    conference_id: id.to_vec(),
                    ..Default::default()
                },
            )),
        ));

        let mut signal = natter_proto::messages::CallSignal {
            invite_id: invite_id.to_vec(),
            from: "alice".into(),
            to: "bob".into(),
            kind: Some(natter_proto::messages::call_signal::Kind::Conference(
                conference::encode(&id, &invite),
            )),
            mac: Vec::new(),
        };
        schedule.signal.seal(&mut signal);
        v.push((
            "signal.conference_encoded",
            h(prost::Message::encode_to_vec(&signal)),
        ));
    }

    // --- signatures with the published test keys (tests/vectors/*.pem)
    let signed = share_signed_message(Role::Caller, &invite_id, &caller_public, &names);
    v.push(("share.signed_message", h(&signed)));
    v.push((
        "share.signature_alice",
        h(cert::sign(&common::key("alice"), &signed)),
    ));
    v.push(("cert.issuer_key_id", h(cert::key_id(&issuer.public_key()))));
    let certificate = issuer.issue(
        &mut common::blinding_rng(),
        &natter_proto::cert::Subject::User {
            name: "alice",
            key: &common::key("alice").to_public_key(),
            chat_key: common::TEST_CHAT_KEY,
        },
        1,
        1_800_000_000,
        1_800_086_400,
    );
    v.push(("cert.body", h(&certificate.body)));
    v.push(("cert.signature", h(&certificate.signature)));
    // --- proof-of-possession bindings (proto/src/binding.rs), with the
    // exporter 0xe7 x 32, node id 0x5a x 16, nonce 0xc3 x 32.
    let exporter = [0xe7u8; 32];
    let join = binding::join_proof_message(&exporter, &[0x5a; 16], &[0xc3; 32], b"statement");
    v.push(("join.signed_message", h(&join)));
    v.push((
        "join.supernode_signed_message",
        h(binding::supernode_join_message(&exporter, &[0xc3; 32])),
    ));
    v.push((
        "join.statement_signed_message",
        h(binding::statement_message(b"statement")),
    ));
    v.push((
        "login.signed_message",
        h(binding::login_message(
            &exporter,
            "alice",
            &[0xaa, 0xbb, 0xcc, 0xdd],
            &common::TEST_CHAT_KEY,
        )),
    ));
    v.push((
        "announce.signed_message",
        h(binding::announce_message(&exporter, &[0x5a; 16])),
    ));
    v.push((
        "promote.signed_message",
        h(binding::promote_message(&exporter, &[0x5a; 16])),
    ));
    v.push((
        "promote.signature",
        h(cert::sign(
            &common::key("alice"),
            &binding::promote_message(&exporter, &[0x5a; 16]),
        )),
    ));
    v.push((
        "link.signed_message",
        h(binding::link_hello_message(
            binding::LinkRole::Dialler,
            &exporter,
        )),
    ));
    v.push((
        "chat.signed_message",
        h(binding::chat_message(
            &[0x11; 16],
            "alice",
            "bob",
            1_800_000_000_123,
            "hi",
        )),
    ));

    // --- end-to-end chat (section 8): alice -> bob, "hi", the message of
    // chat.signed_message, alice's certificate of cert.body, a fixed
    // ephemeral secret and bob's chat secret 0x22 x 32.
    let eph_secret = [0x5eu8; 32];
    let bob_chat_secret = [0x22u8; 32];
    let bob_chat_key = cert::chat_public(&bob_chat_secret);
    let eph_public = cert::chat_public(&eph_secret);
    let chat_shared = StaticSecret::from(eph_secret)
        .diffie_hellman(&PublicKey::from(bob_chat_key))
        .to_bytes();
    let (chat_key, chat_nonce) =
        natter_proto::chat::derive(&chat_shared, &eph_public, &bob_chat_key);
    v.push(("chat.ephemeral_secret", h(eph_secret)));
    v.push(("chat.ephemeral_public", h(eph_public)));
    v.push(("chat.recipient_chat_secret", h(bob_chat_secret)));
    v.push(("chat.recipient_chat_key", h(bob_chat_key)));
    v.push(("chat.shared", h(chat_shared)));
    v.push(("chat.aead_key", h(chat_key)));
    v.push(("chat.aead_nonce", h(chat_nonce)));
    v.push((
        "chat.aad",
        h(natter_proto::chat::aad(
            &[0x11; 16],
            "alice",
            "bob",
            1_800_000_000_123,
        )),
    ));
    let alice_identity = cert::Identity {
        key: common::key("alice"),
        certificate: certificate.clone(),
        chat_secret: [0x11; 32],
    };
    let bob_verified = cert::VerifiedCertificate {
        name: "bob".into(),
        public_key: common::key("bob").to_public_key(),
        chat_key: bob_chat_key,
        serial: 2,
        not_before: 1_800_000_000,
        not_after: 1_800_086_400,
    };
    let sealed_chat = natter_proto::chat::seal_with_ephemeral(
        &mut common::blinding_rng(),
        eph_secret,
        &alice_identity,
        &bob_verified,
        &[0x11; 16],
        "alice",
        "bob",
        1_800_000_000_123,
        "hi",
    )
    .unwrap();
    let chat_body = natter_proto::messages::ChatBody {
        text: "hi".into(),
        sender_certificate: Some(certificate.clone()),
        signature: cert::sign(
            &common::key("alice"),
            &binding::chat_message(&[0x11; 16], "alice", "bob", 1_800_000_000_123, "hi"),
        ),
    };
    v.push(("chat.body", h(prost::Message::encode_to_vec(&chat_body))));
    v.push(("chat.sealed", h(&sealed_chat.sealed)));
    // And it opens as bob.
    let bob_identity = cert::Identity {
        key: common::key("bob"),
        certificate: issuer.issue(
            &mut common::blinding_rng(),
            &natter_proto::cert::Subject::User {
                name: "bob",
                key: &common::key("bob").to_public_key(),
                chat_key: bob_chat_key,
            },
            2,
            1_800_000_000,
            1_800_086_400,
        ),
        chat_secret: bob_chat_secret,
    };
    let opened = natter_proto::chat::open(
        &sealed_chat,
        &bob_identity,
        &issuer.public_key(),
        1_800_000_001_000,
    )
    .unwrap();
    assert_eq!(opened.text, "hi");
    // --- a join statement (section 5.1.1), signed with alice.pem
    let statement = natter_proto::statement::sign(
        &common::key("alice"),
        &mut common::blinding_rng(),
        &natter_proto::messages::JoinStatement {
            name: "alice".into(),
            home_node_id: vec![0x5a; 16],
            joined_at: 1_800_000_000_123,
            nonce: vec![0xc3; 32],
        },
    );
    v.push(("statement.encoded", h(&statement.statement)));
    v.push(("statement.signature_alice", h(&statement.signature)));
    assert_eq!(
        statement.signature,
        cert::sign(
            &common::key("alice"),
            &binding::statement_message(&statement.statement)
        ),
        "blinded statement signatures are the unblinded bytes"
    );

    // --- envelopes as framed on a stream
    let ping = Envelope::new(0, envelope::Body::Ping(Ping { nonce: 0x0102_0304 }));
    v.push(("frame.ping", h(to_frame(&ping).unwrap())));
    let login = Envelope::new(
        7,
        envelope::Body::LoginRequest(LoginRequest {
            name: "alice".into(),
            password: "correct horse".into(),
            public_key: vec![0xaa, 0xbb, 0xcc, 0xdd],
            ..Default::default()
        }),
    );
    v.push(("frame.login_request", h(to_frame(&login).unwrap())));
    let lookup = Envelope::new(
        9,
        envelope::Body::DirectoryLookup(natter_proto::messages::DirectoryLookup {
            name: "carol".into(),
            take_pending_chat: true,
            page_chat: true,
            delivered_ids: vec![vec![0x11; 16]],
        }),
    );
    v.push((
        "frame.directory_lookup_paged",
        h(to_frame(&lookup).unwrap()),
    ));
    let full = Envelope::new(
        3,
        envelope::Body::Error(natter_proto::messages::ErrorReply::new(
            natter_proto::messages::ErrorCode::MailboxFull,
            "full",
        )),
    );
    v.push(("frame.error_mailbox_full", h(to_frame(&full).unwrap())));
    let delivered = Envelope::new(
        5,
        envelope::Body::ChatDelivered(natter_proto::messages::ChatDelivered {
            message_ids: vec![vec![0x11; 16], vec![0x22; 16]],
        }),
    );
    v.push(("frame.chat_delivered", h(to_frame(&delivered).unwrap())));
    let hello_acking = Envelope::new(
        1,
        envelope::Body::JoinHello(natter_proto::messages::JoinHello {
            certificate: None,
            acks_chat: true,
            beacons: false,
        }),
    );
    v.push((
        "frame.join_hello_acks_chat",
        h(to_frame(&hello_acking).unwrap()),
    ));

    // --- TLS-over-TCP records (section 10)
    use natter_proto::record::{Record, to_bytes};
    v.push((
        "record.envelope_ping",
        h(to_bytes(&Record::Envelope(ping.clone())).unwrap()),
    ));
    v.push((
        "record.datagram",
        h(to_bytes(&Record::Datagram(datagram.clone())).unwrap()),
    ));
    v.push((
        "record.close",
        h(to_bytes(&Record::Close {
            code: 3,
            reason: "joined again".into(),
        })
        .unwrap()),
    ));
    v.push(("record.keepalive", h(to_bytes(&Record::Keepalive).unwrap())));

    // --- STUN answers within 1.6 times the request
    use natter_proto::stun;
    let tid: [u8; 12] = std::array::from_fn(|i| i as u8);
    let from: std::net::SocketAddr = "192.0.2.1:32853".parse().unwrap();
    let origin: std::net::SocketAddr = "198.51.100.10:3478".parse().unwrap();
    let other: std::net::SocketAddr = "198.51.100.10:3479".parse().unwrap();
    let mut padded = stun::Message::request(tid);
    padded.change_port = true;
    padded.pad_to(stun::PADDED_REQUEST_LEN);
    let padded = padded.encode();
    v.push(("stun.request_padded", h(&padded)));
    let bare = stun::Message::request(tid);
    v.push((
        "stun.answer_to_20",
        h(stun::answer(&bare, stun::HEADER_LEN, from, origin, other).unwrap()),
    ));
    let plain = stun::Message::request(tid).encode();
    v.push((
        "stun.answer_to_40",
        h(stun::answer(&bare, plain.len(), from, origin, other).unwrap()),
    ));
    v.push((
        "stun.answer_to_padded",
        // Received on `origin`, change-port: sent from `other`.
        h(stun::answer(
            &stun::Message::decode(&padded).unwrap(),
            padded.len(),
            from,
            other,
            other,
        )
        .unwrap()),
    ));

    // --- Relay binds with a cookie (section 7.5)
    use natter_proto::relay;
    let token = [0x5a; relay::TOKEN_LEN];
    let cookie = relay::cookie(&[0x42; 32], 3, &token, from);
    v.push(("relay.cookie", h(cookie)));
    let first = relay::encode_bind(&token, &[0; relay::COOKIE_LEN], 0x1234, 0);
    v.push(("relay.bind_first", h(&first)));
    v.push((
        "relay.reply_cookie",
        h(relay::encode_bind_reply(
            &first,
            relay::BindStatus::Cookie,
            &cookie,
        )),
    ));
    let second = relay::encode_bind(&token, &cookie, 0x1235, 0);
    v.push(("relay.bind_with_cookie", h(&second)));
    v.push((
        "relay.reply_bound",
        h(relay::encode_bind_reply(
            &second,
            relay::BindStatus::Bound,
            &cookie,
        )),
    ));

    // --- Liveness beacons (section 7.5)
    use natter_proto::alive;
    let ticket = alive::ticket(&[0x42; 32], from.ip(), 1_800_000_000, 0x0102_0304);
    v.push(("alive.ticket", h(ticket.to_bytes())));
    let beacon = alive::encode_beacon(&ticket, 7, 0x1236, 0);
    v.push(("alive.beacon", h(beacon)));
    let (echo, _) = alive::answer(&[0x42; 32], &beacon, from.ip(), 1_700_000_000)
        .expect("the vector beacon verifies");
    v.push(("alive.echo", h(echo)));
    v
}

/// `name = hex` lines of every ```test-vectors block in the document.
fn documented() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(path).expect("docs/PROTOCOL.md exists");
    let mut map = BTreeMap::new();
    let mut inside = false;
    for line in doc.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            inside = trimmed == "```test-vectors";
            continue;
        }
        if inside && let Some((k, val)) = trimmed.split_once(" = ") {
            let prev = map.insert(k.trim().to_owned(), val.trim().to_owned());
            assert!(prev.is_none(), "vector {k} documented twice");
        }
    }
    map
}

#[test]
fn the_documented_vectors_are_what_the_code_computes() {
    let computed = compute();
    if std::env::var_os("NATTER_PRINT_VECTORS").is_some() {
        for (k, val) in &computed {
            println!("{k} = {val}");
        }
    }
    let documented = documented();
    assert!(
        documented.len() >= 30,
        "only {} vectors documented",
        documented.len()
    );
    for (k, val) in &computed {
        assert_eq!(
            documented.get(*k).map(String::as_str),
            Some(val.as_str()),
            "vector {k} in docs/PROTOCOL.md"
        );
    }
    let known: std::collections::BTreeSet<_> = computed.iter().map(|(k, _)| *k).collect();
    for k in documented.keys() {
        assert!(
            known.contains(k.as_str()),
            "docs/PROTOCOL.md has unknown vector {k}"
        );
    }
}

#[test]
fn the_key_schedule_vector_matches_rfc_7748() {
    // The shared secret RFC 7748 gives for these two keys.
    let caller: [u8; 32] = arr("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    let callee: [u8; 32] = arr("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
    let shared = StaticSecret::from(caller)
        .diffie_hellman(&PublicKey::from(&StaticSecret::from(callee)))
        .to_bytes();
    assert_eq!(
        h(shared),
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    );
}
