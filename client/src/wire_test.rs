//! The version-interop test hook: with `NATTER_TEST_WIRE_VERSION=N` the
//! client speaks protocol version `N` on the wire (it sends `N` in every
//! envelope and refuses every other version, 2 included) with this build's
//! messages unchanged. It stands for a build whose protocol version was
//! bumped, so that the lab can show such a build being refused and the
//! matrix reporting the cell as INCOMPATIBLE, not as a NAT failure
//! (`interop-tests/tests/version_interop.rs`, docs/PROTOCOL.md 3.5).
//!
//! **A test hook, not a feature**: a client with it set talks to no server
//! of this build. It prints a warning when it is on.

/// The environment variable of the hook.
pub const ENV: &str = "NATTER_TEST_WIRE_VERSION";

/// Turns the hook on if [`ENV`] holds a version number other than this
/// build's; returns the version it speaks then. A value that is not a
/// number is refused with an error (a typo must not pass for a test).
pub fn init_from_env() -> Result<Option<u32>, String> {
    let Some(value) = std::env::var_os(ENV).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let version: u32 = value
        .to_str()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("{ENV}={value:?} is not a protocol version number"))?;
    if version == natter_proto::PROTOCOL_VERSION {
        return Ok(None);
    }
    natter_proto::messages::set_test_wire_version(version);
    eprintln!(
        "natter: warning: {ENV} is set (a test hook): this client speaks protocol version \
         {version}, not {}; servers of this build refuse it",
        natter_proto::PROTOCOL_VERSION
    );
    Ok(Some(version))
}
