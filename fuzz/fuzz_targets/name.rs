//! User names as peers and logins send them: `proto::name::normalise` and
//! `same`. Total; normalising is idempotent; a name is the same as itself
//! exactly when it is valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::name::{normalise, same};

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    match normalise(name) {
        Ok(n) => {
            assert_eq!(normalise(&n).as_ref(), Ok(&n));
            assert!(same(name, &n));
            assert!(n.is_ascii());
        }
        Err(_) => assert!(!same(name, name)),
    }
});
