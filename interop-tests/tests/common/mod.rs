//! What the lab's integration tests share: where the binaries under test
//! are, and the lock that keeps the tests of one test binary from running
//! two labs at once (on a 2-core CI machine, calls of several labs at once
//! compete for the CPU and make timing assertions flaky).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

/// `NATTER_BIN_DIR`, else the directory of this crate's binary (where
/// `cargo test --workspace` builds natter-login, natter-supernode and
/// natter too).
pub fn bin_dir() -> PathBuf {
    std::env::var_os("NATTER_BIN_DIR").map_or_else(
        || {
            PathBuf::from(env!("CARGO_BIN_EXE_natter-interop-tests"))
                .parent()
                .unwrap()
                .to_path_buf()
        },
        PathBuf::from,
    )
}

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Held for the whole of a test that runs a lab.
pub fn one_lab_at_a_time() -> MutexGuard<'static, ()> {
    // a failed test poisons the lock; the next one may still run
    ONE_LAB_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub mod images;
