//! Join statements: what a user signs when joining a supernode, "I, `name`,
//! am joined at the supernode `home_node_id` since `joined_at`", made
//! unique by the supernode's challenge nonce. The statement travels in the
//! `JoinProof` and then in every copy of the user's directory record
//! (`UserRecord.statement`, `statement_signature`), so a replica believes a
//! record's home only on the user's own word (docs/PROTOCOL.md, section 8.6).
//!
//! This module makes and opens the signature; the rules about what a
//! statement must say (name, home, nonce, time) belong to whoever checks it
//! (the supernode's `core::statements`).

use prost::Message;
use rand_core::CryptoRngCore;
use rsa::{RsaPrivateKey, RsaPublicKey};

use crate::binding::statement_message;
use crate::cert::{sign_blinded, verify_signature};
use crate::messages::JoinStatement;

/// An encoded [`JoinStatement`] and the user's signature over
/// [`statement_message`] of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SignedStatement {
    pub statement: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Why a statement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatementError {
    #[error("no join statement")]
    Missing,
    #[error("join statement signature does not verify with the certified key")]
    BadSignature,
    #[error("join statement is malformed: {0}")]
    Malformed(#[from] prost::DecodeError),
}

/// Encodes `statement` and signs it with the user's certified `key`, the
/// private-key operation blinded with randomness from `rng`.
pub fn sign(
    key: &RsaPrivateKey,
    rng: &mut impl CryptoRngCore,
    statement: &JoinStatement,
) -> SignedStatement {
    let statement = statement.encode_to_vec();
    let signature = sign_blinded(key, rng, &statement_message(&statement));
    SignedStatement {
        statement,
        signature,
    }
}

/// Checks the signature of an encoded statement with the certified `key`
/// (before reading a byte of it), then decodes it.
pub fn open(
    statement: &[u8],
    signature: &[u8],
    key: &RsaPublicKey,
) -> Result<JoinStatement, StatementError> {
    if statement.is_empty() || signature.is_empty() {
        return Err(StatementError::Missing);
    }
    verify_signature(key, &statement_message(statement), signature)
        .map_err(|_| StatementError::BadSignature)?;
    Ok(JoinStatement::decode(statement)?)
}
