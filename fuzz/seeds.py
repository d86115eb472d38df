#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/<target>/ from the test vectors of
docs/PROTOCOL.md (checked against the code by proto/tests/vectors.rs) and
the RFC 5769 STUN vector. Run from anywhere: python3 fuzz/seeds.py
The files are committed; rerun after a deliberate change of the vectors."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent
DOC = ROOT.parent / "docs" / "PROTOCOL.md"


def vectors():
    out, inside = {}, False
    for line in DOC.read_text().splitlines():
        t = line.strip()
        if t.startswith("```"):
            inside = t == "```test-vectors"
            continue
        if inside and " = " in t:
            k, v = t.split(" = ", 1)
            out[k.strip()] = bytes.fromhex(v.strip())
    return out


def varint(n):
    b = bytearray()
    while True:
        if n < 0x80:
            b.append(n)
            return bytes(b)
        b.append((n & 0x7F) | 0x80)
        n >>= 7


def field(number, value):
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(value)) + value


def write(target, name, data):
    d = ROOT / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


v = vectors()
frames = [v["frame.ping"], v["frame.login_request"]]
# frame: first byte = read size, then the stream.
write("frame", "ping", b"\x03" + frames[0])
write("frame", "login_request", b"\x07" + frames[1])
write("frame", "both", b"\x40" + frames[0] + frames[1])
# envelope: one envelope, without its length prefix.
write("envelope", "ping", frames[0][4:])
write("envelope", "login_request", frames[1][4:])
# record: first byte = read size, then the stream.
records = ["record.envelope_ping", "record.datagram", "record.close", "record.keepalive"]
for r in records:
    write("record", r.split(".")[1], b"\x05" + v[r])
write("record", "all", b"\x11" + b"".join(v[r] for r in records))
# som: the sealed vector datagram opens with the fuzz target's key.
write("som", "datagram", v["som.datagram"])
# relay: binds (SoM header, CONNECT, "NRLY", 0x80, token, cookie) and replies.
write("relay", "bind", v["relay.bind_first"])
write("relay", "bind_reply", v["relay.reply_bound"])
write("relay", "cookie_reply", v["relay.reply_cookie"])
# alive: a liveness beacon and its echo (SoM header, PING, "NRLY", kind, ticket, seq).
write("alive", "beacon", v["alive.beacon"])
write("alive", "echo", v["alive.echo"])
# stun: RFC 5769 section 2.2 response, and a bare binding request.
write("stun", "rfc5769_response", bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220"
    "002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"))
write("stun", "request", bytes.fromhex("000100002112a442") + bytes(range(12)))
# cert: the vector certificate (valid at the target's clock), its body.
certificate = field(1, v["cert.body"]) + field(2, v["cert.signature"])
write("cert", "certificate", certificate)
write("cert", "body", v["cert.body"])
# call: alice's invite from the vectors (her certificate, the share she
# signed for invite 00..0f), then a hangup; length-delimited CallSignals.
share = field(1, v["kdf.caller_public"]) + field(2, v["share.signature_alice"]) + field(3, certificate)
invite = field(1, v["kdf.invite_id"]) + field(2, b"alice") + field(3, b"bob") + field(10, field(1, share))
hangup = field(1, v["kdf.invite_id"]) + field(2, b"alice") + field(15, b"\x08\x01")
write("call", "invite_hangup", varint(len(invite)) + invite + varint(len(hangup)) + hangup)
# The same, answered: a candidate update and a hangup that the target seals
# with the call's real MAC (`mac` = "seal"), after one without a MAC.
update = field(1, v["kdf.invite_id"]) + field(2, b"alice") + field(16, b"\x10\x01") + field(20, b"seal")
sealed = hangup + field(20, b"seal")
write("call", "invite_sealed", varint(len(invite)) + invite + varint(len(hangup)) + hangup
      + varint(len(update)) + update + varint(len(sealed)) + sealed)
# chat_message: the chat.* vector's message (alice -> bob, "hi"), which the
# target's bob opens.
chat = (field(1, bytes([0x11] * 16)) + field(2, b"alice") + field(3, b"bob")
        + varint(5 << 3) + varint(1800000000123) + field(6, v["chat.sealed"]))
write("chat_message", "alice_to_bob", chat)
# join_statement: alice's record at node 5a.. with the vector statement
# and certificate (verifies at the target's clock); the statement alone.
record = (field(1, b"alice") + b"\x10\x01" + b"\x18" + varint(1800000000123)
          + field(4, b"\x5a" * 16) + field(6, v["statement.encoded"])
          + field(7, v["statement.signature_alice"]) + field(8, certificate))
write("join_statement", "record", record)
write("join_statement", "statement", v["statement.encoded"])
# name and report: plain text.
write("name", "alice", b"alice")
write("name", "mixed", b"Alice.B_c-9")
write("report", "minimal", b'{"peer":"bob","path":"direct","duration_s":1.5}')
# Structured targets (inputs built with `arbitrary`): any bytes are an
# input; the vectors' bytes give them a start.
write("message", "vectors", frames[0] + frames[1])
write("session", "vectors", v["som.datagram"] + v["record.datagram"] + certificate[:64])
write("jitter", "vectors", v["som.datagram"] + v["som.plaintext"])
write("node", "vectors", frames[0] + frames[1] + v["record.close"])
# decrypt: a key log line for the som vector's keys, the som datagram, and
# the datagram in an IPv4/UDP packet (raw IP) as a capture holds it.
keylog = ("NATTER_CALL " + "00" * 16 + " c2s " + v["som.key"].hex() + " " + v["som.iv"].hex()
          + " 74565\nCLIENT_TRAFFIC_SECRET_0 00 00\n").encode()
write("decrypt", "keylog", keylog)
write("decrypt", "datagram", v["som.datagram"])
udp = (4000).to_bytes(2, "big") + (5000).to_bytes(2, "big") + (8 + len(v["som.datagram"])).to_bytes(2, "big") + b"\0\0"
ip = (b"\x45\x00" + (20 + len(udp) + len(v["som.datagram"])).to_bytes(2, "big") + b"\x00\x01\x00\x00\x40\x11\x00\x00"
      + bytes([127, 0, 0, 1]) + bytes([127, 0, 0, 1]))
write("decrypt", "ipv4_packet", ip + udp + v["som.datagram"])
# conference: each vector alone (the decoder), then as records of
# op (0 alice, 1 bob the host, 3 leg up, 4 leg lost, 5 time), len, payload.
def rec(op, payload):
    return bytes([op, len(payload)]) + payload
for name in ["invite", "roster", "host_elected", "leave"]:
    write("conference", name, v["conference." + name])
write("conference", "roster_then_host",
      rec(1, v["conference.roster"]) + rec(1, v["conference.host_elected"]))
write("conference", "host_leaves", rec(1, v["conference.leave"]) + rec(5, b"\x10\x27"))
write("conference", "host_lost_then_timeout", rec(4, b"\x01") + rec(5, b"\x40\x00") + rec(3, b"\x00"))
