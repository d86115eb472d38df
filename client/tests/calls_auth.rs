//! Identity bound into calls, against real login-server, supernode and
//! client processes on loopback, with the attacker written as a test client
//! that is an ordinary joined user ("mallory") speaking the wire protocol:
//! it cannot end a running call with a forged hangup, and its invite
//! carrying alice's key share under a certificate for "mallory" on alice's
//! key (what login proof of possession is there to prevent, but calls do
//! not rely on it) is refused by the real callee.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::call::field;
use common::{Cluster, assert_ok, wait_output};
use natter_client::supernode::SupernodeSession;
use natter_client::{Home, now_unix_secs};
use natter_proto::call::{CallEvent, CallSetup};
use natter_proto::cert::{Identity, Issuer, Subject};
use natter_proto::messages::{
    CallHangup, CallSignal, Candidate, CandidateUpdate, HangupReason, RejectReason, call_signal,
    envelope,
};
use rsa::RsaPublicKey;
use rsa::pkcs8::DecodePrivateKey;

const LIMIT: Duration = Duration::from_secs(60);
const REQUEST: Duration = Duration::from_secs(5);

fn login_key(cluster: &Cluster) -> RsaPublicKey {
    natter_client::tls::read_login_key(&cluster.login_key).unwrap()
}

fn identity(cluster: &Cluster, user: &str) -> Identity {
    Home::open(cluster.home(user))
        .unwrap()
        .load(&login_key(cluster), now_unix_secs())
        .unwrap()
        .identity
}

/// `user` joined through the overlay by this test (not the `natter` binary).
async fn join(cluster: &Cluster, user: &str) -> Arc<SupernodeSession> {
    let home = Home::open(cluster.home(user)).unwrap();
    let session = home.load(&login_key(cluster), now_unix_secs()).unwrap();
    let overlay = home
        .join_overlay(&session, vec![cluster.supernodes[0]])
        .await
        .unwrap();
    overlay.session()
}

/// Waits for a line of the file at `path` containing `needle`.
fn wait_line(path: &Path, needle: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            start.elapsed() < limit,
            "no line with {needle:?} in {} after {limit:?}: {text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `natter answer` as bob through supernode 1; returns once it waits.
fn answer(cluster: &Cluster, calls: u32) -> (Child, std::path::PathBuf, std::path::PathBuf) {
    let dir = cluster.dir.path();
    let (json, err) = (dir.join("bob.json"), dir.join("bob.err"));
    let mut bob = cluster
        .natter(
            "bob",
            &[
                "--bootstrap",
                &cluster.supernodes[1].to_string(),
                "answer",
                "--calls",
                &calls.to_string(),
                "--stats-json",
                json.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(bob.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("waiting for calls"), "{first}");
    (bob, json, err)
}

/// The next call signal pushed to `session` for `invite_id`.
async fn next_signal(session: &SupernodeSession, invite_id: &[u8]) -> CallSignal {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let push = tokio::time::timeout_at(deadline, session.next_push())
            .await
            .expect("no call signal within 20 s")
            .expect("session ended");
        if let envelope::Body::CallSignal(s) = push
            && s.invite_id == invite_id
        {
            return s;
        }
    }
}

async fn send(session: &SupernodeSession, signal: CallSignal) {
    session
        .request(envelope::Body::CallSignal(signal), REQUEST)
        .await
        .expect("the supernode routed the signal");
}

/// A call invite to bob from `me` under `name` (a fresh key share of seed
/// `share`), as the caller's client makes it.
fn invite_bob(
    me: &Identity,
    name: &str,
    invite_id: [u8; 16],
    share: [u8; 32],
    login_key: &RsaPublicKey,
) -> CallSetup {
    CallSetup::invite(
        me,
        name,
        "bob",
        invite_id,
        share,
        Vec::new(),
        login_key.clone(),
        0,
        30_000,
        &mut rand::thread_rng(),
    )
}

/// Plays the caller's side of `setup` over `session` until the call is
/// connected (sending whatever the setup answers); an end fails the test.
async fn connect(session: &SupernodeSession, setup: &mut CallSetup, invite_id: &[u8]) {
    loop {
        let signal = next_signal(session, invite_id).await;
        setup.handle_signal(&signal, now_unix_secs());
        while let Some(out) = setup.poll_signal() {
            send(session, out).await;
        }
        let connected = std::iter::from_fn(|| setup.poll_event())
            .inspect(|e| assert!(!matches!(e, CallEvent::Ended(_)), "{e:?}"))
            .any(|e| matches!(e, CallEvent::Connected { .. }));
        if connected {
            return;
        }
    }
}

#[test]
fn a_forged_hangup_from_another_user_does_not_end_a_running_call() {
    let cluster = Cluster::start(2, None);
    for user in ["alice", "bob", "mallory"] {
        cluster.add_user(user);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mallory = rt.block_on(join(&cluster, "mallory"));
    let (bob, bob_json, bob_err) = answer(&cluster, 1);
    let dir = cluster.dir.path();
    let (alice_json, alice_err) = (dir.join("alice.json"), dir.join("alice.err"));
    let alice = cluster
        .natter(
            "alice",
            &[
                "--bootstrap",
                &cluster.supernodes[0].to_string(),
                "call",
                "bob",
                "--duration",
                "6",
                "--stats-json",
                alice_json.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&alice_err).unwrap())
        .spawn()
        .unwrap();

    // The invite id of the running call (an on-path attacker sees it;
    // bob's client prints it).
    let line = wait_line(&bob_err, "call from alice (invite ", LIMIT);
    let hex = line.rsplit("invite ").next().unwrap().trim_end_matches(')');
    let invite_id: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(invite_id.len(), 16, "{line}");
    // Let the call connect and media flow, then attack, both ways.
    std::thread::sleep(Duration::from_millis(1500));
    rt.block_on(async {
        for to in ["bob", "alice"] {
            let forged = |kind| CallSignal {
                invite_id: invite_id.clone(),
                // The supernode stamps "mallory" whatever is put here.
                from: if to == "bob" { "alice" } else { "bob" }.into(),
                to: to.into(),
                kind: Some(kind),
                mac: vec![0x5a; 32],
            };
            send(
                &mallory,
                forged(call_signal::Kind::Hangup(CallHangup {
                    reason: HangupReason::Normal as i32,
                })),
            )
            .await;
            send(
                &mallory,
                forged(call_signal::Kind::Candidates(CandidateUpdate {
                    candidates: vec![Candidate::default()],
                    end_of_candidates: true,
                })),
            )
            .await;
        }
    });

    let caller = wait_output(alice, LIMIT);
    let callee = wait_output(bob, LIMIT);
    assert_ok(&caller);
    assert_ok(&callee);
    let (alice_json, bob_json) = (
        std::fs::read_to_string(alice_json).unwrap(),
        std::fs::read_to_string(bob_json).unwrap(),
    );
    for json in [&alice_json, &bob_json] {
        // The call ran its full 6 s with media both ways...
        assert!(field(json, "duration_s") >= 5.5, "{json}");
        assert!(field(json, "media_packets_received") >= 200.0, "{json}");
        assert!(field(json, "media_packets_sent") >= 200.0, "{json}");
        // ...and each side dropped mallory's hangup and candidates.
        assert_eq!(field(json, "ignored_signals"), 2.0, "{json}");
    }
    // Alice hung up at the end; bob's call ended with her (genuine, MACed) hangup.
    assert!(bob_json.contains("\"ended_by_peer\":true"), "{bob_json}");
    for err in [&bob_err, &alice_err] {
        wait_line(
            err,
            "ignored a hangup signal from mallory: not from the peer",
            Duration::ZERO,
        );
        wait_line(
            err,
            "ignored a candidates signal from mallory: not from the peer",
            Duration::ZERO,
        );
    }
}

#[test]
fn an_invite_with_a_swapped_certificate_is_refused_by_the_real_callee() {
    let cluster = Cluster::start(2, None);
    for user in ["alice", "bob", "mallory"] {
        cluster.add_user(user);
    }
    let login_key = login_key(&cluster);
    let alice = identity(&cluster, "alice");
    // A certificate for "mallory" on alice's key, as a login server without
    // proof of possession would have issued it.
    let pem = std::fs::read_to_string(cluster.dir.path().join("login/login-key.pem")).unwrap();
    let issuer = Issuer::new(rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap());
    let now = now_unix_secs();
    let mallory_on_alices_key = issuer.issue(
        &mut rand::thread_rng(),
        &Subject::User {
            name: "mallory",
            key: &alice.key.to_public_key(),
            chat_key: natter_proto::cert::chat_public(&alice.chat_secret),
        },
        999,
        now - 60,
        now + 3600,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mallory = rt.block_on(join(&cluster, "mallory"));
    let (bob, bob_json, bob_err) = answer(&cluster, 1);

    rt.block_on(async {
        // alice's genuine invite to bob (her share names caller "alice"),
        // sent by mallory with the certificate swapped for "mallory"'s.
        let invite_id = [0x61; 16];
        let mut setup = invite_bob(&alice, "alice", invite_id, [7; 32], &login_key);
        let mut invite = setup.poll_signal().unwrap();
        let Some(call_signal::Kind::Invite(body)) = &mut invite.kind else {
            panic!("not an invite");
        };
        body.share.as_mut().unwrap().certificate = Some(mallory_on_alices_key.clone());
        send(&mallory, invite).await;
        let answer = next_signal(&mallory, &invite_id).await;
        assert_eq!(answer.from, "bob");
        assert!(
            matches!(
                answer.kind,
                Some(call_signal::Kind::Reject(r)) if r.reason == RejectReason::BadKeyShare as i32
            ),
            "{answer:?}"
        );

        // Control: the same certificate with a share that does name
        // "mallory" (which only alice's key could sign) gets through, so
        // the refusal above came from the names in the share. Mallory then
        // hangs up with the call's MAC and bob's call ends normally.
        let invite_id = [0x62; 16];
        let as_mallory = Identity {
            certificate: mallory_on_alices_key.clone(),
            ..alice.clone()
        };
        let mut setup = invite_bob(&as_mallory, "mallory", invite_id, [8; 32], &login_key);
        send(&mallory, setup.poll_signal().unwrap()).await;
        connect(&mallory, &mut setup, &invite_id).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        setup.hangup();
        while let Some(signal) = setup.poll_signal() {
            send(&mallory, signal).await;
        }
    });
    let callee = wait_output(bob, LIMIT);
    let out = assert_ok(&callee);
    assert!(out.contains("call with mallory"), "{out}");
    let json = std::fs::read_to_string(bob_json).unwrap();
    assert!(json.contains("\"ended_by_peer\":true"), "{json}");
    assert_eq!(field(&json, "ignored_signals"), 0.0, "{json}");
    let refused = wait_line(&bob_err, "call from mallory refused", Duration::ZERO);
    assert!(
        refused.contains("the peer's identity did not verify"),
        "{refused}"
    );
}

/// SECURITY.md, "Conferences": the conference id of an invite is not
/// authenticated, so an attacker (here the caller itself, as a supernode
/// could add the id to anyone's invite) can make the callee answer a call
/// as a conference leg. The callee then waits for an `invite` message that
/// must come MACed on that leg, answers every other call busy meanwhile,
/// and gives up within the conference's formation limits (35 s): it is not
/// held, and hears nobody it did not accept.
#[test]
fn a_forged_conference_id_holds_the_callee_at_most_35_s_and_others_get_busy() {
    let cluster = Cluster::start(2, None);
    for user in ["bob", "mallory"] {
        cluster.add_user(user);
    }
    let login_key = login_key(&cluster);
    let mallory_id = identity(&cluster, "mallory");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mallory = rt.block_on(join(&cluster, "mallory"));
    let (bob, bob_json, bob_err) = answer(&cluster, 1);
    let invited = Instant::now();
    rt.block_on(async {
        let invite_id = [0x71; 16];
        let mut setup = invite_bob(&mallory_id, "mallory", invite_id, [9; 32], &login_key);
        setup.set_conference_id([0x77; 16]);
        send(&mallory, setup.poll_signal().unwrap()).await;
        connect(&mallory, &mut setup, &invite_id).await;
        // Bob took the call as a leg of "conference 77..": a plain call
        // meanwhile is busy.
        let plain_id = [0x72; 16];
        let mut plain = invite_bob(&mallory_id, "mallory", plain_id, [10; 32], &login_key);
        send(&mallory, plain.poll_signal().unwrap()).await;
        let answer = next_signal(&mallory, &plain_id).await;
        assert!(
            matches!(answer.kind, Some(call_signal::Kind::Busy(_))),
            "{answer:?}"
        );
    });
    // Mallory sends no `invite` message (and no media): bob's leg ends on
    // its media timeout (10 s) or the conference gives up (35 s), and bob
    // is free again; nobody became host, nothing was mixed.
    let callee = wait_output(bob, Duration::from_secs(60));
    let waited = invited.elapsed();
    let out = assert_ok(&callee);
    assert!(
        waited < Duration::from_secs(45),
        "bob held {waited:?}: {out}"
    );
    let err = std::fs::read_to_string(&bob_err).unwrap();
    assert!(
        err.contains("invited into conference 77777777777777777777777777777777 by mallory"),
        "{err}"
    );
    assert!(out.contains("host - (hosts -)"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bob_json).unwrap()).unwrap();
    let conference = &json["conference"];
    assert!(conference["host"].is_null(), "{conference}");
    assert_eq!(conference["hosts"], serde_json::json!([]), "{conference}");
    assert_eq!(conference["hosted_frames"], 0, "{conference}");
    assert_eq!(conference["legs_started"], 1, "{conference}");
    assert_eq!(json["legs"][0]["peer"], "mallory", "{json}");
}
