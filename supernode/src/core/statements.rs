//! Join statements and the records that carry them (issue 13, item 2).
//!
//! A user who joins signs a `JoinStatement` naming itself, this supernode
//! (`home_node_id`), the time (`joined_at`, its clock) and the challenge
//! nonce; the home checks it with [`verify_join`] and keeps it with the
//! session, and every copy of the user's `UserRecord` carries it with the
//! user's certificate. A replica (or a supernode reading a lookup's answer)
//! believes a record only through [`verify_record`]: the certificate is the
//! login server's, for a user; the statement is signed by the certified key
//! and names the record's user and home; nothing in it is in the future.
//! Which verified record is newer is the store's rule
//! ([`crate::store::RecordStore::put`]), on the [`RecordMeta`] taken from
//! the signed parts.
//!
//! Expired certificates: a record outlives its certificate for
//! [`RECORD_OUTLIVES_CERTIFICATE_MS`] as last-seen information, but only
//! as an offline record: a record whose certificate expired is refused when
//! it says online or away, and a held one is reported offline once its
//! certificate expires ([`crate::store::effective_status`]), so an expired
//! certificate never makes a user online nor a home to route to. A
//! statement dated after its certificate expired is refused.

use natter_proto::cert::{self, CertError};
use natter_proto::messages::{Certificate, JoinStatement, PresenceStatus, UserRecord};
use natter_proto::statement::{self, StatementError};
use rsa::RsaPublicKey;

use crate::NodeId;
pub use crate::store::{RECORD_OUTLIVES_CERTIFICATE_MS, RecordMeta};

/// How far a statement's `joined_at` may be from the home's clock when the
/// user joins (the user's clock is not the supernode's).
pub const JOIN_SKEW_MS: i64 = 5 * 60 * 1000;
/// How far in the future a record's `joined_at` or `last_seen` may be at a
/// replica: the join skew plus a minute between supernodes' clocks.
pub const RECORD_SKEW_MS: i64 = JOIN_SKEW_MS + 60 * 1000;

/// A join statement the home verified, kept with the session and copied
/// into every record of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedJoin {
    /// The encoded `JoinStatement`, exactly as signed.
    pub statement: Vec<u8>,
    pub signature: Vec<u8>,
    /// The user's certificate (replaced by a renewal of the same keys).
    pub certificate: Certificate,
    pub meta: RecordMeta,
}

/// Why a join statement was refused at the join.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Statement(#[from] StatementError),
    #[error("join statement names {got:?}, the certificate {expected:?}")]
    Name { expected: String, got: String },
    #[error("join statement names another supernode as home")]
    Home,
    #[error("join statement does not carry this challenge's nonce")]
    Nonce,
    #[error("join statement time {joined_at} is more than 5 minutes from now ({now})")]
    Clock { joined_at: i64, now: i64 },
}

/// The user's certificate as the home checked it at the `JoinHello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certified {
    pub certificate: Certificate,
    pub name: String,
    pub public_key: RsaPublicKey,
    /// Unix seconds.
    pub not_after: i64,
}

/// Checks the statement of a `JoinProof` at the home `home` that sent the
/// challenge `nonce`, at `now_ms`: signed by the certified key, naming the
/// certified user, this home and this nonce, dated within [`JOIN_SKEW_MS`].
pub fn verify_join(
    signed: &[u8],
    signature: &[u8],
    certified: &Certified,
    home: &NodeId,
    nonce: &[u8],
    now_ms: i64,
) -> Result<SignedJoin, JoinError> {
    let said = statement::open(signed, signature, &certified.public_key)?;
    if said.name != certified.name {
        return Err(JoinError::Name {
            expected: certified.name.clone(),
            got: said.name,
        });
    }
    if said.home_node_id != home {
        return Err(JoinError::Home);
    }
    if said.nonce != nonce {
        return Err(JoinError::Nonce);
    }
    if said.joined_at.abs_diff(now_ms) > JOIN_SKEW_MS.unsigned_abs() {
        return Err(JoinError::Clock {
            joined_at: said.joined_at,
            now: now_ms,
        });
    }
    Ok(SignedJoin {
        statement: signed.to_vec(),
        signature: signature.to_vec(),
        certificate: certified.certificate.clone(),
        meta: RecordMeta {
            joined_at: said.joined_at,
            not_after_ms: certified.not_after.saturating_mul(1000),
        },
    })
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record carries no certificate")]
    NoCertificate,
    #[error("record certificate refused: {0}")]
    Certificate(#[source] CertError),
    #[error("record of a certificate expired at {not_after} says the user is online")]
    ExpiredOnline { not_after: i64 },
    #[error("record outlived its certificate (expired at {not_after}) by more than 30 days")]
    Outlived { not_after: i64 },
    #[error("record statement refused: {0}")]
    Statement(#[source] StatementError),
    #[error(
        "record of {record:?} carries the statement of {statement:?} and certificate of {certificate:?}"
    )]
    Name {
        record: String,
        statement: String,
        certificate: String,
    },
    #[error("record home is not the home its statement names")]
    Home,
    #[error("record statement dated after its certificate expired")]
    StatementAfterExpiry,
    #[error("record {what} {at} is in the future (now {now})")]
    Future {
        what: &'static str,
        at: i64,
        now: i64,
    },
}

impl RecordError {
    /// Whether the record was refused for a time in the future.
    pub fn is_future(&self) -> bool {
        matches!(self, Self::Future { .. })
    }
}

/// A record whose signed parts verified, with their [`RecordMeta`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRecord {
    record: UserRecord,
    meta: RecordMeta,
    home: NodeId,
}

impl VerifiedRecord {
    /// A record this node's store holds (stored only once verified, or
    /// built from a session's verified statement).
    pub(crate) fn held(record: UserRecord, meta: RecordMeta) -> Option<Self> {
        let home = crate::node_id(&record.home_node_id)?;
        Some(Self { record, meta, home })
    }

    /// The record (its unsigned fields as they came).
    pub fn record(&self) -> &UserRecord {
        &self.record
    }

    /// What it is ordered and aged by.
    pub fn meta(&self) -> RecordMeta {
        self.meta
    }

    /// The home its statement names.
    pub fn home(&self) -> NodeId {
        self.home
    }

    /// Whether it says the user is online (or away).
    pub fn online(&self) -> bool {
        self.record.status != PresenceStatus::Offline as i32
    }

    /// The order of two verified records of one user: the later statement,
    /// then the later `last_seen`.
    pub fn order(&self) -> (i64, i64) {
        (self.meta.joined_at, self.record.last_seen)
    }

    /// The record and its meta.
    pub fn into_parts(self) -> (UserRecord, RecordMeta) {
        (self.record, self.meta)
    }
}

fn future(what: &'static str, at: i64, now_ms: i64) -> Result<(), RecordError> {
    if at > now_ms.saturating_add(RECORD_SKEW_MS) {
        return Err(RecordError::Future {
            what,
            at,
            now: now_ms,
        });
    }
    Ok(())
}

/// Checks `record` against the pinned login key at `now_ms`: a user
/// certificate of the login server's (an expired one only for an offline
/// record, up to [`RECORD_OUTLIVES_CERTIFICATE_MS`] after its expiry); a
/// statement signed by the certified key, dated before the certificate
/// expired; the same name in record, statement and certificate; the
/// record's home the statement's; `joined_at` and `last_seen` no later than
/// [`RECORD_SKEW_MS`] after now. Total: never panics on any input.
pub fn verify_record(
    record: &UserRecord,
    login_key: &RsaPublicKey,
    now_ms: i64,
) -> Result<VerifiedRecord, RecordError> {
    // The cheap check first: no RSA for a record from the future.
    future("last_seen", record.last_seen, now_ms)?;
    let certificate = record
        .certificate
        .as_ref()
        .ok_or(RecordError::NoCertificate)?;
    let now_s = now_ms.div_euclid(1000);
    let certified = match cert::verify(certificate, login_key, now_s) {
        Ok(verified) => verified,
        Err(CertError::Expired { not_after, .. }) => {
            if record.status != PresenceStatus::Offline as i32 {
                return Err(RecordError::ExpiredOnline { not_after });
            }
            if now_ms.saturating_sub(not_after.saturating_mul(1000))
                >= RECORD_OUTLIVES_CERTIFICATE_MS
            {
                return Err(RecordError::Outlived { not_after });
            }
            // Genuine, and valid just before it expired.
            cert::verify(certificate, login_key, not_after.saturating_sub(1))
                .map_err(RecordError::Certificate)?
        }
        Err(e) => return Err(RecordError::Certificate(e)),
    };
    let said: JoinStatement = statement::open(
        &record.statement,
        &record.statement_signature,
        &certified.public_key,
    )
    .map_err(RecordError::Statement)?;
    if said.name != record.name || certified.name != record.name {
        return Err(RecordError::Name {
            record: record.name.clone(),
            statement: said.name,
            certificate: certified.name,
        });
    }
    let home = crate::node_id(&said.home_node_id).ok_or(RecordError::Home)?;
    if said.home_node_id != record.home_node_id {
        return Err(RecordError::Home);
    }
    let not_after_ms = certified.not_after.saturating_mul(1000);
    if said.joined_at >= not_after_ms {
        return Err(RecordError::StatementAfterExpiry);
    }
    future("joined_at", said.joined_at, now_ms)?;
    Ok(VerifiedRecord {
        record: record.clone(),
        meta: RecordMeta {
            joined_at: said.joined_at,
            not_after_ms,
        },
        home,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use natter_proto::cert::{Issuer, Subject};
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use rsa::RsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;

    use super::*;

    const NOW_MS: i64 = 1_800_000_000_000;
    const NOW_S: i64 = NOW_MS / 1000;
    const HOME: NodeId = [5; 16];
    const NONCE: [u8; 32] = [9; 32];

    fn key(pem: &str) -> RsaPrivateKey {
        RsaPrivateKey::from_pkcs8_pem(pem).unwrap()
    }

    fn issuer() -> Issuer {
        Issuer::new(key(include_str!("../../../proto/tests/vectors/issuer.pem")))
    }

    fn alice() -> RsaPrivateKey {
        key(include_str!("../../../proto/tests/vectors/alice.pem"))
    }

    fn certificate(name: &str, user: &RsaPrivateKey, from: i64, to: i64) -> Certificate {
        issuer().issue(
            &mut StdRng::seed_from_u64(1),
            &Subject::User {
                name,
                key: &user.to_public_key(),
                chat_key: cert::chat_public(&[0x11; 32]),
            },
            1,
            from,
            to,
        )
    }

    fn signed(name: &str, user: &RsaPrivateKey, home: &[u8], joined_at: i64) -> (Vec<u8>, Vec<u8>) {
        let s = statement::sign(
            user,
            &mut StdRng::seed_from_u64(2),
            &JoinStatement {
                name: name.into(),
                home_node_id: home.to_vec(),
                joined_at,
                nonce: NONCE.to_vec(),
            },
        );
        (s.statement, s.signature)
    }

    fn record(status: PresenceStatus, joined_at: i64, certificate: Certificate) -> UserRecord {
        let (statement, statement_signature) = signed("alice", &alice(), &HOME, joined_at);
        UserRecord {
            name: "alice".into(),
            status: status as i32,
            last_seen: joined_at,
            home_node_id: HOME.to_vec(),
            home_addr: None,
            statement,
            statement_signature,
            certificate: Some(certificate),
        }
    }

    fn valid() -> Certificate {
        certificate("alice", &alice(), NOW_S - 3600, NOW_S + 3600)
    }

    #[test]
    fn a_genuine_record_verifies_with_the_meta_of_its_statement() {
        let login = issuer().public_key();
        let r = record(PresenceStatus::Online, NOW_MS - 10, valid());
        let v = verify_record(&r, &login, NOW_MS).unwrap();
        assert_eq!(v.home(), HOME);
        assert_eq!(v.meta().joined_at, NOW_MS - 10);
        assert_eq!(v.meta().not_after_ms, (NOW_S + 3600) * 1000);
        assert!(v.online());
        assert_eq!(v.record(), &r);
    }

    #[test]
    fn an_expired_certificate_keeps_a_record_only_offline_and_only_30_days() {
        let login = issuer().public_key();
        let expired = certificate("alice", &alice(), NOW_S - 7200, NOW_S - 3600);
        let joined = (NOW_S - 5000) * 1000;
        let offline = record(PresenceStatus::Offline, joined, expired.clone());
        assert!(verify_record(&offline, &login, NOW_MS).is_ok());
        let online = record(PresenceStatus::Online, joined, expired.clone());
        assert!(matches!(
            verify_record(&online, &login, NOW_MS),
            Err(RecordError::ExpiredOnline { .. })
        ));
        let later = NOW_MS - 3600 * 1000 + RECORD_OUTLIVES_CERTIFICATE_MS;
        assert!(matches!(
            verify_record(&offline, &login, later),
            Err(RecordError::Outlived { .. })
        ));
        // A statement signed after the certificate expired.
        let after = record(PresenceStatus::Offline, NOW_MS - 1000, expired);
        assert_eq!(
            verify_record(&after, &login, NOW_MS),
            Err(RecordError::StatementAfterExpiry)
        );
    }

    #[test]
    fn future_times_names_and_homes_are_refused() {
        let login = issuer().public_key();
        let ahead = record(PresenceStatus::Online, NOW_MS + RECORD_SKEW_MS + 1, valid());
        let e = verify_record(&ahead, &login, NOW_MS).unwrap_err();
        assert!(e.is_future(), "{e}");
        let mut seen = record(PresenceStatus::Online, NOW_MS, valid());
        seen.last_seen = NOW_MS + RECORD_SKEW_MS + 1;
        assert!(
            verify_record(&seen, &login, NOW_MS)
                .unwrap_err()
                .is_future()
        );
        seen.last_seen = NOW_MS + RECORD_SKEW_MS;
        assert!(
            verify_record(&seen, &login, NOW_MS).is_ok(),
            "within the skew"
        );

        let mut renamed = record(PresenceStatus::Online, NOW_MS, valid());
        renamed.name = "bob".into();
        assert!(matches!(
            verify_record(&renamed, &login, NOW_MS),
            Err(RecordError::Name { .. })
        ));
        let mut moved = record(PresenceStatus::Online, NOW_MS, valid());
        moved.home_node_id = vec![6; 16];
        assert_eq!(
            verify_record(&moved, &login, NOW_MS),
            Err(RecordError::Home)
        );
        let mut unsigned = record(PresenceStatus::Online, NOW_MS, valid());
        unsigned.statement_signature[0] ^= 1;
        assert_eq!(
            verify_record(&unsigned, &login, NOW_MS),
            Err(RecordError::Statement(StatementError::BadSignature))
        );
        let mut bare = record(PresenceStatus::Online, NOW_MS, valid());
        bare.certificate = None;
        assert_eq!(
            verify_record(&bare, &login, NOW_MS),
            Err(RecordError::NoCertificate)
        );
    }

    #[test]
    fn a_join_statement_must_name_the_user_this_home_this_nonce_and_now() {
        let certified = Certified {
            certificate: valid(),
            name: "alice".into(),
            public_key: alice().to_public_key(),
            not_after: NOW_S + 3600,
        };
        let check = |name: &str, home: &[u8], nonce: &[u8], at: i64| {
            let s = statement::sign(
                &alice(),
                &mut StdRng::seed_from_u64(3),
                &JoinStatement {
                    name: name.into(),
                    home_node_id: home.to_vec(),
                    joined_at: at,
                    nonce: nonce.to_vec(),
                },
            );
            verify_join(
                &s.statement,
                &s.signature,
                &certified,
                &HOME,
                &NONCE,
                NOW_MS,
            )
        };
        let ok = check("alice", &HOME, &NONCE, NOW_MS - JOIN_SKEW_MS).unwrap();
        assert_eq!(ok.meta.joined_at, NOW_MS - JOIN_SKEW_MS);
        assert_eq!(ok.certificate, certified.certificate);
        assert!(matches!(
            check("bob", &HOME, &NONCE, NOW_MS),
            Err(JoinError::Name { .. })
        ));
        assert_eq!(
            check("alice", &[6; 16], &NONCE, NOW_MS),
            Err(JoinError::Home)
        );
        assert_eq!(
            check("alice", &HOME, &[8; 32], NOW_MS),
            Err(JoinError::Nonce)
        );
        assert!(matches!(
            check("alice", &HOME, &NONCE, NOW_MS + JOIN_SKEW_MS + 1),
            Err(JoinError::Clock { .. })
        ));
        assert_eq!(
            verify_join(b"", b"", &certified, &HOME, &NONCE, NOW_MS),
            Err(JoinError::Statement(StatementError::Missing))
        );
    }
}
