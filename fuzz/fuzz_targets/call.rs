//! Call setup on the callee's side, `proto::call::CallSetup`, fed call
//! signals (protobuf, length-delimited) as the supernode routes them from a
//! peer: the first is taken as the invite (`CallSetup::incoming`: the
//! caller's certificate and key share, signed for this call from `from` to
//! "bob", checked against the fixed test issuer); a verified invite is
//! answered as [`BOB`]; the rest go to `handle_signal`. A signal whose `mac`
//! is the four bytes `seal` gets the real MAC under the call's signal key
//! (once connected), so the genuine mid-call paths are reached too.
//!
//! Properties: total; an invite is announced as `Incoming` only with a
//! certificate the issuer signed for the name the supernode stamped in
//! `from`; a connected call ends on a signal only if it came from the peer
//! with the right MAC; the count of ignored signals never goes down; the
//! queues stay bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_fuzz::{BOB, ISSUER, NOW_S};
use natter_proto::call::{CallEvent, CallSetup, Phase};
use natter_proto::handshake::SignalKey;
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
    let mut signal_key: Option<SignalKey> = None;
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
            match event {
                CallEvent::Incoming { caller } => {
                    assert_eq!(
                        Ok(caller.name.clone()),
                        natter_proto::name::normalise(&invite.from),
                        "certificate name is not the sender's"
                    );
                    let Some(Kind::Invite(i)) = &invite.kind else {
                        panic!("Incoming without an invite");
                    };
                    let cert = i.share.as_ref().and_then(|s| s.certificate.as_ref());
                    let cert = cert.expect("Incoming without a certificate");
                    assert!(natter_proto::cert::verify(cert, &ISSUER.public_key(), NOW_S).is_ok());
                    setup.accept(&BOB, [2; 32], Vec::new(), NOW_S, &mut rsa::rand_core::OsRng);
                }
                CallEvent::Connected { keys, .. } => signal_key = Some(keys.signal.clone()),
                _ => {}
            }
        }
        let Ok(mut signal) = CallSignal::decode_length_delimited(&mut data) else {
            break;
        };
        if signal.mac == b"seal"
            && let Some(key) = &signal_key
        {
            key.seal(&mut signal);
        }
        now_ms += 1_000;
        let phase = setup.phase();
        let ignored = setup.ignored().total();
        setup.handle_signal(&signal, NOW_S);
        assert!(setup.ignored().total() >= ignored);
        if phase == Phase::Connected && setup.phase() == Phase::Ended {
            let key = signal_key.as_ref().expect("connected without keys");
            assert!(
                natter_proto::name::normalise(&signal.from).as_deref() == Ok(setup.peer_name())
                    && key.verify(&signal),
                "a connected call ended on a signal not from the peer with its MAC"
            );
        }
        setup.handle_timeout(now_ms);
    }
});
