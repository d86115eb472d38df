//! natter-client: see README.md for its status.

/// The protocol version this component speaks.
pub fn protocol_version() -> u32 {
    natter_proto::PROTOCOL_VERSION
}
