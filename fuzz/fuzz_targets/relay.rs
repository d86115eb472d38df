//! Relay bind datagrams: `proto::relay::decode_bind` (what a supernode's
//! relay parses from any UDP source) and `decode_bind_reply` / the client's
//! `RelayBinds::handle`. Total; a decoded bind or reply re-encodes to the
//! same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::relay::{
    BIND_LEN, BindStatus, RelayBinds, RelayLeg, decode_bind, decode_bind_reply, encode_bind,
    encode_bind_reply,
};
use natter_proto::som::Header;

fuzz_target!(|data: &[u8]| {
    if let Ok(bind) = decode_bind(data) {
        let (header, _) = Header::decode(data).expect("a bind has a SoM header");
        assert_eq!(
            encode_bind(&bind.token, &bind.cookie, header.msg_id, header.random),
            data
        );
    }
    if let Ok(reply) = decode_bind_reply(data) {
        // Replies are exactly as long as binds (amplification 1.0).
        assert_eq!(data.len(), BIND_LEN);
        let bind = encode_bind(&reply.token, &[0; 16], 1, 0);
        let again = encode_bind_reply(&bind, reply.status, &reply.cookie);
        assert_eq!(again[3..], data[3..]);
    }
    // The client side: a reply from its relay.
    let relay = "192.0.2.1:3478".parse().expect("address");
    let token: [u8; 16] = data
        .get(8..24)
        .and_then(|t| t.try_into().ok())
        .unwrap_or([0; 16]);
    let mut binds = RelayBinds::default();
    binds.add(RelayLeg { addr: relay, token });
    let _ = binds.poll(0);
    let handled = binds.handle(relay, data);
    let reply = decode_bind_reply(data).ok();
    assert_eq!(handled.is_some(), reply.is_some());
    // A confirmation is a `Bound` reply for this side's token.
    let confirmed = reply.is_some_and(|r| r.status == BindStatus::Bound && r.token == token);
    assert_eq!(handled == Some(true), confirmed);
    assert_eq!(binds.is_bound(&RelayLeg { addr: relay, token }), confirmed);
});
