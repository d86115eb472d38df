//! What a malicious supernode can send as a victim's directory record:
//! every forgery it can make from what it sees (the victim's current
//! record, which any replica or lookup hands it, and someone else's), its
//! own key and certificate, and an older statement the victim really
//! signed (when she once joined the attacker's node). Shared by the
//! in-memory test (`directory_sim.rs`) and the real-process one
//! (`directory.rs`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use natter_proto::cert::{self, Issuer};
use natter_proto::messages::{JoinStatement, PresenceStatus, UserRecord};
use natter_proto::statement;
use prost::Message;
use rsa::RsaPrivateKey;

/// A year in milliseconds: "far in the future".
pub const YEAR_MS: i64 = 365 * 24 * 3600 * 1000;

/// What a replica must do with a forgery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// It does not verify.
    Refused,
    /// It does not verify: a time in it is in the future.
    Future,
    /// It verifies but is not newer than the record held.
    Stale,
}

/// One forged record and what must become of it.
#[derive(Debug, Clone)]
pub struct Forged {
    pub what: &'static str,
    pub record: UserRecord,
    pub expect: Expect,
}

/// The `joined_at` of a record's statement.
pub fn joined_at(record: &UserRecord) -> i64 {
    JoinStatement::decode(record.statement.as_slice())
        .expect("a genuine statement")
        .joined_at
}

/// Every forgery of the victim's record with the attacker as home.
/// `current` is the victim's genuine record as a replica holds it,
/// `victim_key` her key (only to make the statement she signed when she
/// once joined the attacker), `other` another user's genuine record.
pub fn forgeries(
    current: &UserRecord,
    victim_key: &RsaPrivateKey,
    other: &UserRecord,
    attacker_id: &[u8],
    attacker_key: &RsaPrivateKey,
    now_ms: i64,
) -> Vec<Forged> {
    let victim = current.name.clone();
    let mut rng = rand::rngs::OsRng;
    let base = UserRecord {
        name: victim.clone(),
        status: PresenceStatus::Online as i32,
        last_seen: now_ms,
        home_node_id: attacker_id.to_vec(),
        home_addr: None,
        ..Default::default()
    };
    let claim = |joined_at: i64| JoinStatement {
        name: victim.clone(),
        home_node_id: attacker_id.to_vec(),
        joined_at,
        nonce: vec![7; 32],
    };
    let with = |what, record, expect| Forged {
        what,
        record,
        expect,
    };
    let mut out = Vec::new();

    let mut bare = base.clone();
    bare.last_seen = now_ms + YEAR_MS;
    out.push(with(
        "no statement, no certificate, seen a year ahead",
        bare,
        Expect::Future,
    ));
    out.push(with(
        "no statement, no certificate",
        base.clone(),
        Expect::Refused,
    ));

    let mut missing = base.clone();
    missing.certificate.clone_from(&current.certificate);
    out.push(with(
        "the victim's certificate without a statement",
        missing,
        Expect::Refused,
    ));

    let mut moved = current.clone();
    moved.home_node_id = attacker_id.to_vec();
    moved.last_seen = now_ms;
    out.push(with(
        "the victim's current statement under another home",
        moved,
        Expect::Refused,
    ));

    let own = statement::sign(attacker_key, &mut rng, &claim(now_ms));
    let mut wrong_key = base.clone();
    wrong_key.certificate.clone_from(&current.certificate);
    wrong_key.statement = own.statement.clone();
    wrong_key.statement_signature = own.signature.clone();
    out.push(with(
        "a statement signed by the attacker's key with the victim's certificate",
        wrong_key,
        Expect::Refused,
    ));

    let now_s = now_ms / 1000;
    let rogue = Issuer::new(attacker_key.clone());
    let forged_cert = rogue.issue(
        &mut rng,
        &cert::Subject::User {
            name: &victim,
            key: &attacker_key.to_public_key(),
            chat_key: cert::chat_public(&[0x22; 32]),
        },
        1,
        now_s - 60,
        now_s + 3600,
    );
    let mut foreign = base.clone();
    foreign.certificate = Some(forged_cert);
    foreign.statement = own.statement;
    foreign.statement_signature = own.signature;
    out.push(with(
        "a certificate from another issuer",
        foreign,
        Expect::Refused,
    ));

    let mut borrowed = other.clone();
    borrowed.name.clone_from(&victim);
    borrowed.last_seen = now_ms;
    out.push(with(
        "someone else's statement and certificate",
        borrowed,
        Expect::Refused,
    ));

    let older = statement::sign(victim_key, &mut rng, &claim(joined_at(current) - 60_000));
    let mut replayed = base.clone();
    replayed.certificate.clone_from(&current.certificate);
    replayed.statement = older.statement;
    replayed.statement_signature = older.signature;
    out.push(with(
        "an older genuine statement naming the attacker",
        replayed.clone(),
        Expect::Stale,
    ));
    replayed.last_seen = now_ms + YEAR_MS;
    out.push(with(
        "an older genuine statement naming the attacker, seen a year ahead",
        replayed,
        Expect::Future,
    ));

    let mut gone = current.clone();
    gone.status = PresenceStatus::Offline as i32;
    gone.last_seen = now_ms + 1000;
    out.push(with(
        "the victim's current record marked offline by a peer that is not her home",
        gone,
        Expect::Stale,
    ));
    out
}

/// How many forgeries expect `what`.
pub fn count(forged: &[Forged], what: Expect) -> u64 {
    forged.iter().filter(|f| f.expect == what).count() as u64
}
