//! Join statements and the directory records that carry them, as a peer
//! supernode sends them: `UserRecord` (protobuf) then
//! `core::statements::verify_record` against the fixed test issuer; the
//! `JoinStatement` decode; `proto::statement::open` with alice's key.
//! Total; a record verifies only with a certificate of the issuer's, a
//! statement signed by its key, one name throughout, the statement's home,
//! nothing in the future; a statement opens only with alice's signature
//! (checked on one input in 16, chosen by the bytes' sum: it is one RSA
//! verification of a random signature per input and no decoder, and it kept
//! the long run near 1,000 inputs a second).
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_fuzz::{ALICE, ISSUER, NOW_S};
use natter_proto::messages::{JoinStatement, PresenceStatus, UserRecord};
use natter_proto::statement;
use natter_supernode::core::statements::{RECORD_SKEW_MS, verify_record};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let now_ms = NOW_S * 1000;
    if let Ok(record) = UserRecord::decode(data)
        && let Ok(verified) = verify_record(&record, &ISSUER.public_key(), now_ms)
    {
        let said = JoinStatement::decode(record.statement.as_slice()).expect("signed statement");
        assert_eq!(said.name, record.name);
        assert_eq!(said.home_node_id, record.home_node_id);
        assert_eq!(verified.home().as_slice(), record.home_node_id.as_slice());
        assert_eq!(verified.meta().joined_at, said.joined_at);
        assert!(said.joined_at <= now_ms + RECORD_SKEW_MS);
        assert!(record.last_seen <= now_ms + RECORD_SKEW_MS);
        assert!(said.joined_at < verified.meta().not_after_ms);
        if now_ms >= verified.meta().not_after_ms {
            assert_eq!(record.status, PresenceStatus::Offline as i32);
        }
    }
    if let Ok(said) = JoinStatement::decode(data) {
        assert_eq!(
            JoinStatement::decode(said.encode_to_vec().as_slice()),
            Ok(said)
        );
    }
    // Any bytes as a statement, under a signature that is not alice's.
    if data.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) % 16 != 0 {
        return;
    }
    let alice = ALICE.key.to_public_key();
    let (signature, statement) = data.split_at(data.len().min(256));
    assert!(statement::open(statement, signature, &alice).is_err());
});
