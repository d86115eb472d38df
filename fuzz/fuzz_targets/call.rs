//! Call setup on the callee's side, `proto::call::CallSetup`, fed call
//! signals (protobuf, length-delimited) as the supernode routes them from a
//! peer: the first is taken as the invite (`CallSetup::incoming`: the
//! caller's certificate and signed key share checked against the fixed test
//! issuer), the rest go to `handle_signal`. Total; an invite is announced as
//! `Incoming` only with a certificate the issuer signed for the name the
//! supernode stamped in `from`; the queues stay bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_fuzz::{ISSUER, NOW_S};
use natter_proto::call::{CallEvent, CallSetup};
use natter_proto::messages::CallSignal;
use natter_proto::messages::call_signal::Kind;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let Ok(invite) = CallSignal::decode_length_delimited(&mut data) else {
        return;
    };
    let Some(mut setup) =
        CallSetup::incoming(&invite, "bob", ISSUER.public_key(), NOW_S, 0, 30_000)
    else {
        assert!(!matches!(invite.kind, Some(Kind::Invite(_))) || invite.invite_id.len() != 16);
        return;
    };
    let mut now_ms = 0;
    loop {
        let mut signals = 0;
        while setup.poll_signal().is_some() {
            signals += 1;
            assert!(signals <= 64, "the signal queue is not bounded");
        }
        let mut events = 0;
        while let Some(event) = setup.poll_event() {
            events += 1;
            assert!(events <= 64, "the event queue is not bounded");
            if let CallEvent::Incoming { caller } = event {
                assert_eq!(
                    caller.name, invite.from,
                    "certificate name is not the sender's"
                );
                let Some(Kind::Invite(i)) = &invite.kind else {
                    panic!("Incoming without an invite");
                };
                let cert = i.share.as_ref().and_then(|s| s.certificate.as_ref());
                let cert = cert.expect("Incoming without a certificate");
                assert!(natter_proto::cert::verify(cert, &ISSUER.public_key(), NOW_S).is_ok());
            }
        }
        let Ok(signal) = CallSignal::decode_length_delimited(&mut data) else {
            break;
        };
        now_ms += 1_000;
        setup.handle_signal(&signal, NOW_S);
        setup.handle_timeout(now_ms);
    }
});
