//! Writes the fixed RSA-2048 keys used by the test vectors in
//! docs/PROTOCOL.md (PKCS#8 PEM). Run once; the keys are committed.
//!
//! `cargo run -p natter-proto --example gen_test_keys -- proto/tests/vectors`
use rsa::RsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, LineEnding};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: gen_test_keys DIR")?;
    for name in ["issuer", "alice", "bob"] {
        let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)?;
        let pem = key.to_pkcs8_pem(LineEnding::LF)?;
        std::fs::write(format!("{dir}/{name}.pem"), pem.as_bytes())?;
    }
    Ok(())
}
