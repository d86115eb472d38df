-- Natter dissector for Wireshark and tshark (Lua; tested with Wireshark 4.0).
--
-- Load it for one run:   tshark -X lua_script:tools/wireshark/natter.lua -r capture.pcap
-- or install it:         cp tools/wireshark/natter.lua ~/.local/lib/wireshark/plugins/
--
-- What it names (docs/PROTOCOL.md; docs/TRAFFIC.md has the fields and worked examples):
--   * SoM datagrams (section 7): message id, the three random bits, the function
--     (function byte & 0x8F), the sealed body and its 16-byte AES-GCM tag;
--   * relay binds and bind replies (section 7.5): "NRLY", status, token, cookie;
--   * liveness beacons and their echoes (section 7.5): "NRLY", kind or status, the
--     ticket (mac, expiry, nonce) and the sequence number;
--   * the supernode reflector's STUN (section 7.5), handed to Wireshark's STUN dissector;
--   * TLS-over-TCP records (section 10) once Wireshark has decrypted the TLS (give it the
--     key log: -o tls.keylog_file:FILE, see NATTER_KEYLOG), by ALPN "natter/1": envelopes
--     with their message type, DATAGRAM records (SoM datagrams and relay binds as above),
--     CLOSE and KEEPALIVE;
--   * QUIC streams (sections 1 and 2) once Wireshark has decrypted the QUIC (the same key
--     log), by ALPN "natter/1": length-prefixed envelope frames with their message type;
--   * with the listing natter-decrypt writes (preference natter.clear_file), the plaintext
--     of each SoM datagram it decrypted: frame number and Opus TOC of voice frames, the
--     clock of probes and probe replies.
--
-- Natter uses any UDP port, so SoM datagrams are found heuristically: a UDP datagram is
-- taken as Natter when it is a relay bind or reply, a STUN message of Natter's (SOFTWARE
-- "natter", or the answer to one), or a well-formed SoM datagram to or from an address
-- already seen speaking Natter (STUN or relay). Preference natter.any_som takes every
-- well-formed SoM datagram instead (more false positives on other UDP).

local natter = Proto("natter", "Natter")

local FUNCTIONS = {
    [0x02] = "Ping",
    [0x03] = "Connect",
    [0x07] = "Probe",
    [0x0d] = "Data",
    [0x0f] = "ProbeReply",
}
local SOM_HEADER = 3
local TAG_LEN = 16
local RELAY_LEN = 40
local RELAY_STATUS = {
    [0x00] = "bound",
    [0x01] = "unknown or expired token",
    [0x02] = "over quota",
    [0x03] = "cookie (bind again echoing it)",
    [0x80] = "bind",
}
local RECORD_KINDS = {
    [0x01] = "ENVELOPE",
    [0x02] = "DATAGRAM",
    [0x03] = "CLOSE",
    [0x04] = "KEEPALIVE",
}
local RECORD_MAX = {
    [0x01] = 65536,
    [0x02] = 1472,
    [0x03] = 127,
    [0x04] = 0,
}
local CLOSE_CODES = {
    [0] = "normal",
    [1] = "malformed",
    [2] = "refused",
    [3] = "replaced",
    [4] = "slow",
    [5] = "rate limited",
}
-- natter.v1.Envelope: the field number of the body names the message (proto/proto/natter.proto).
local MESSAGES = {
    [3] = "ErrorReply", [4] = "Ping", [5] = "Pong", [6] = "Ack",
    [10] = "RegisterRequest", [11] = "RegisterReply", [12] = "LoginRequest", [13] = "LoginReply",
    [14] = "BuddyBlobPut", [15] = "BuddyBlobGet", [16] = "BuddyBlob",
    [17] = "SupernodeAnnounce", [18] = "SupernodeAnnounced",
    [20] = "JoinHello", [21] = "JoinChallenge", [22] = "JoinProof", [23] = "JoinAccepted",
    [24] = "Leave", [25] = "SupernodeList", [26] = "CertificateRenewal",
    [30] = "SetPresence", [31] = "PresenceSubscribe", [32] = "PresenceUpdate",
    [33] = "SearchRequest", [34] = "SearchReply",
    [40] = "CallSignal", [41] = "RelayAllocate", [42] = "RelayAllocated",
    [50] = "ChatMessage", [51] = "ChatReceipt", [52] = "InboxFetch", [53] = "ChatDelivered",
    [60] = "GossipMembership", [61] = "DirectoryStore", [62] = "DirectoryLookup",
    [63] = "DirectoryRecords", [64] = "LinkHello",
}
local DIRECTIONS = { c2s = "caller to callee", s2c = "callee to caller" }

local f = natter.fields
-- SoM header and sealed body
f.kind = ProtoField.string("natter.kind", "Kind")
f.msg_id = ProtoField.uint16("natter.som.msg_id", "Message id", base.HEX)
f.fbyte = ProtoField.uint8("natter.som.function_byte", "Function byte", base.HEX)
f.func = ProtoField.uint8("natter.som.function", "Function", base.HEX, FUNCTIONS, 0x8F)
f.random = ProtoField.uint8("natter.som.random", "Random bits", base.DEC, nil, 0x70)
f.sealed = ProtoField.bytes("natter.som.sealed", "Sealed body")
f.sealed_len = ProtoField.uint16("natter.som.sealed_len", "Sealed body length (with the tag)")
f.plain_len = ProtoField.uint16("natter.som.plaintext_len", "Plaintext length")
f.tag = ProtoField.bytes("natter.som.tag", "AES-GCM tag")
-- relay binds and replies
f.relay_magic = ProtoField.string("natter.relay.magic", "Magic")
f.relay_bind = ProtoField.bool("natter.relay.bind", "Bind (not a reply)")
f.relay_status = ProtoField.uint8("natter.relay.status", "Status", base.HEX, RELAY_STATUS)
f.relay_token = ProtoField.bytes("natter.relay.token", "Token")
f.relay_cookie = ProtoField.bytes("natter.relay.cookie", "Cookie")
-- liveness beacons and echoes
f.beacon = ProtoField.bool("natter.beacon.beacon", "Beacon (not an echo)")
f.beacon_status = ProtoField.uint8("natter.beacon.status", "Echo status", base.DEC, { [0] = "alive", [1] = "ticket expired" })
f.beacon_mac = ProtoField.bytes("natter.beacon.mac", "Ticket mac")
f.beacon_expires = ProtoField.uint32("natter.beacon.expires", "Ticket expires (Unix seconds)")
f.beacon_nonce = ProtoField.uint32("natter.beacon.nonce", "Ticket nonce", base.HEX)
f.beacon_seq = ProtoField.uint64("natter.beacon.seq", "Sequence number")
-- TLS-over-TCP records
f.rec_kind = ProtoField.uint8("natter.rec.kind", "Record kind", base.HEX, RECORD_KINDS)
f.rec_len = ProtoField.uint32("natter.rec.length", "Record length")
f.frame_len = ProtoField.uint32("natter.frame.length", "Frame length")
f.env_version = ProtoField.uint32("natter.envelope.version", "Envelope version")
f.env_request = ProtoField.uint64("natter.envelope.request_id", "Request id")
f.env_type = ProtoField.uint32("natter.envelope.type", "Message type", base.DEC, MESSAGES)
f.env_body = ProtoField.bytes("natter.envelope.body", "Message (protobuf)")
f.close_code = ProtoField.uint32("natter.rec.close.code", "Close code", base.DEC, CLOSE_CODES)
f.close_reason = ProtoField.string("natter.rec.close.reason", "Close reason")
-- plaintext from natter-decrypt's listing
f.clear = ProtoField.bool("natter.clear", "Decrypted")
f.clear_call = ProtoField.string("natter.clear.call_id", "Call id")
f.clear_dir = ProtoField.string("natter.clear.direction", "Direction")
f.clear_index = ProtoField.uint64("natter.clear.index", "Packet index")
f.clear_plain = ProtoField.bytes("natter.clear.plaintext", "Plaintext")
f.frame_number = ProtoField.uint16("natter.clear.frame_number", "Frame number")
f.opus = ProtoField.bytes("natter.clear.opus", "Opus packet")
f.toc = ProtoField.uint8("natter.clear.opus.toc", "Opus TOC", base.HEX)
f.toc_config = ProtoField.uint8("natter.clear.opus.config", "Configuration", base.DEC, nil, 0xF8)
f.toc_stereo = ProtoField.bool("natter.clear.opus.stereo", "Stereo", 8, nil, 0x04)
f.toc_code = ProtoField.uint8("natter.clear.opus.code", "Frame count code", base.DEC, nil, 0x03)
f.clock = ProtoField.uint64("natter.clear.clock_ms", "Sender clock (ms)")

local ef_malformed = ProtoExpert.new("natter.malformed", "Malformed Natter packet",
    expert.group.MALFORMED, expert.severity.ERROR)
local ef_unknown_function = ProtoExpert.new("natter.unknown_function", "Unknown SoM function",
    expert.group.MALFORMED, expert.severity.ERROR)
natter.experts = { ef_malformed, ef_unknown_function }

natter.prefs.any_som = Pref.bool("Take every well-formed SoM datagram", false,
    "Without it, a SoM datagram is Natter only to or from an address seen in Natter's STUN or relay traffic")
natter.prefs.clear_file = Pref.string("natter-decrypt listing", "",
    "The file `natter-decrypt --out FILE` wrote: shows the plaintext of the datagrams it decrypted")

-- Addresses seen speaking Natter, and the transaction ids of Natter's STUN requests.
local endpoints = {}
local stun_transactions = {}
-- natter-decrypt's listing: frame number -> { call, dir, index, func, plain (ByteArray) }
local clear = {}
local clear_loaded = nil

local function endpoint(addr, port)
    return tostring(addr) .. "|" .. tostring(port)
end

local function load_clear()
    local path = natter.prefs.clear_file
    if clear_loaded == path then
        return
    end
    clear = {}
    clear_loaded = path
    if path == nil or path == "" then
        return
    end
    local file = io.open(path, "r")
    if not file then
        return
    end
    for line in file:lines() do
        if line:sub(1, 1) ~= "#" then
            -- frame src dst call_id direction index function plaintext_hex
            local frame, _, _, call, dir, index, func, plain =
                line:match("^(%d+)%s+(%S+)%s+(%S+)%s+(%x+)%s+(%S+)%s+(%d+)%s+(%S+)%s*(%x*)")
            if frame then
                clear[tonumber(frame)] = {
                    call = call, dir = dir, index = index, func = func,
                    plain = ByteArray.new(plain),
                }
            end
        end
    end
    file:close()
end

function natter.init()
    endpoints = {}
    stun_transactions = {}
    clear_loaded = nil
end

local stun_dissector = Dissector.get("stun-udp")
local data_dissector = Dissector.get("data")
local tcp_stream = Field.new("tcp.stream")
local quic_stream = Field.new("quic.stream.stream_id")

-- STUN (RFC 8489): top two bits zero, magic cookie, length matching the datagram.
local function looks_like_stun(tvb)
    local len = tvb:len()
    if len < 20 or len % 4 ~= 0 then
        return false
    end
    if bit.band(tvb(0, 1):uint(), 0xC0) ~= 0 then
        return false
    end
    return tvb(4, 4):uint() == 0x2112A442 and tvb(2, 2):uint() + 20 == len
end

-- Whether a STUN message is Natter's: it says SOFTWARE "natter", or answers a request that did.
local function is_natter_stun(tvb)
    local transaction = tostring(tvb(8, 12):bytes())
    if stun_transactions[transaction] then
        return true
    end
    local offset = 20
    local len = tvb:len()
    while offset + 4 <= len do
        local attr = tvb(offset, 2):uint()
        local alen = tvb(offset + 2, 2):uint()
        if offset + 4 + alen > len then
            return false
        end
        if attr == 0x8022 and alen >= 6 and tvb(offset + 4, 6):string() == "natter" then
            stun_transactions[transaction] = true
            return true
        end
        offset = offset + 4 + alen + ((4 - alen % 4) % 4)
    end
    return false
end

local function is_relay(tvb)
    return tvb:len() == RELAY_LEN and bit.band(tvb(2, 1):uint(), 0x8F) == 0x03
        and tvb(3, 4):string() == "NRLY"
end

local function is_beacon(tvb)
    return tvb:len() == RELAY_LEN and bit.band(tvb(2, 1):uint(), 0x8F) == 0x02
        and tvb(3, 4):string() == "NRLY"
end

local function is_som(tvb)
    return tvb:len() >= SOM_HEADER + TAG_LEN and FUNCTIONS[bit.band(tvb(2, 1):uint(), 0x8F)] ~= nil
end

local function add_header(tree, tvb)
    tree:add(f.msg_id, tvb(0, 2))
    local fb = tree:add(f.fbyte, tvb(2, 1))
    fb:add(f.func, tvb(2, 1))
    fb:add(f.random, tvb(2, 1))
    return FUNCTIONS[bit.band(tvb(2, 1):uint(), 0x8F)]
end

local function add_clear(tree, entry)
    local sub = tree:add(f.clear, true):set_generated()
    sub:set_text("Decrypted by natter-decrypt")
    sub:add(f.clear_call, entry.call):set_generated()
    sub:add(f.clear_dir, entry.dir):append_text(" (" .. (DIRECTIONS[entry.dir] or "?") .. ")"):set_generated()
    sub:add(f.clear_index, UInt64.fromhex(string.format("%x", tonumber(entry.index)))):set_generated()
    if entry.plain:len() == 0 then
        return ""
    end
    local plain = entry.plain:tvb("Natter plaintext")
    sub:add(f.clear_plain, plain()):set_generated()
    if entry.func == "Data" and plain:len() >= 2 then
        local number = plain(0, 2):uint()
        sub:add(f.frame_number, plain(0, 2))
        if plain:len() >= 3 then
            local opus = sub:add(f.opus, plain(2))
            local toc = opus:add(f.toc, plain(2, 1))
            toc:add(f.toc_config, plain(2, 1))
            toc:add(f.toc_stereo, plain(2, 1))
            toc:add(f.toc_code, plain(2, 1))
        end
        return string.format(" frame %d", number)
    elseif (entry.func == "Probe" or entry.func == "ProbeReply") and plain:len() == 8 then
        sub:add(f.clock, plain(0, 8))
        return string.format(" clock %s ms", tostring(plain(0, 8):uint64()))
    end
    return ""
end

-- A relay bind or reply (40 bytes). Returns its summary.
local function dissect_relay(tvb, pinfo, tree)
    local sub = tree:add(natter, tvb(), "Natter relay")
    sub:add(f.kind, "relay"):set_generated()
    add_header(sub, tvb)
    sub:add(f.relay_magic, tvb(3, 4))
    local status = tvb(7, 1):uint()
    sub:add(f.relay_bind, status == 0x80):set_generated()
    sub:add(f.relay_status, tvb(7, 1))
    sub:add(f.relay_token, tvb(8, 16))
    sub:add(f.relay_cookie, tvb(24, 16))
    if status == 0x80 then
        return "Relay bind"
    end
    return "Relay bind reply: " .. (RELAY_STATUS[status] or string.format("status %d", status))
end

-- A liveness beacon or its echo (40 bytes). Returns its summary.
local function dissect_beacon(tvb, pinfo, tree)
    local sub = tree:add(natter, tvb(), "Natter liveness beacon")
    sub:add(f.kind, "beacon"):set_generated()
    add_header(sub, tvb)
    sub:add(f.relay_magic, tvb(3, 4))
    local kind = tvb(7, 1):uint()
    sub:add(f.beacon, kind == 0x81):set_generated()
    if kind ~= 0x81 then
        sub:add(f.beacon_status, tvb(7, 1))
    end
    sub:add(f.beacon_mac, tvb(8, 16))
    sub:add(f.beacon_expires, tvb(24, 4))
    sub:add(f.beacon_nonce, tvb(28, 4))
    sub:add(f.beacon_seq, tvb(32, 8))
    local seq = tostring(tvb(32, 8):uint64())
    if kind == 0x81 then
        return "Liveness beacon " .. seq
    end
    return "Liveness echo " .. seq .. (kind == 0 and "" or string.format(" (status %d)", kind))
end

-- A sealed SoM datagram. Returns its summary.
local function dissect_som(tvb, pinfo, tree, use_clear)
    local sub = tree:add(natter, tvb(), "Natter SoM datagram")
    sub:add(f.kind, "som"):set_generated()
    local name = add_header(sub, tvb)
    if name == nil then
        sub:add_proto_expert_info(ef_unknown_function)
        return "SoM, unknown function"
    end
    local sealed_len = tvb:len() - SOM_HEADER
    if sealed_len < TAG_LEN then
        sub:add_proto_expert_info(ef_malformed, "shorter than the SoM header and a tag")
        return "SoM " .. name .. ", truncated"
    end
    sub:add(f.sealed_len, sealed_len):set_generated()
    sub:add(f.plain_len, sealed_len - TAG_LEN):set_generated()
    if sealed_len > TAG_LEN then
        sub:add(f.sealed, tvb(SOM_HEADER, sealed_len - TAG_LEN))
    end
    sub:add(f.tag, tvb(tvb:len() - TAG_LEN, TAG_LEN))
    local summary = string.format("SoM %s id=0x%04x", name, tvb(0, 2):uint())
    if use_clear then
        load_clear()
        local entry = clear[pinfo.number]
        if entry then
            summary = summary .. add_clear(sub, entry)
        end
    end
    return summary
end

local function set_info(pinfo, text)
    pinfo.cols.protocol = "Natter"
    pinfo.cols.info = text
end

-- One UDP payload: STUN, a relay bind or reply, or a SoM datagram. Returns the bytes
-- taken (0: not Natter).
local function dissect_udp(tvb, pinfo, tree, heuristic)
    if tvb:len() < SOM_HEADER then
        return 0
    end
    local src = endpoint(pinfo.src, pinfo.src_port)
    local dst = endpoint(pinfo.dst, pinfo.dst_port)
    if looks_like_stun(tvb) then
        if not is_natter_stun(tvb) then
            return 0
        end
        endpoints[src] = true
        endpoints[dst] = true
        local sub = tree:add(natter, tvb(), "Natter reflector STUN")
        sub:add(f.kind, "stun"):set_generated()
        stun_dissector:call(tvb, pinfo, tree)
        pinfo.cols.protocol = "Natter/STUN"
        return tvb:len()
    end
    if is_relay(tvb) then
        endpoints[src] = true
        endpoints[dst] = true
        set_info(pinfo, dissect_relay(tvb, pinfo, tree))
        return tvb:len()
    end
    if is_beacon(tvb) then
        endpoints[src] = true
        endpoints[dst] = true
        set_info(pinfo, dissect_beacon(tvb, pinfo, tree))
        return tvb:len()
    end
    if not is_som(tvb) then
        return 0
    end
    if heuristic and not natter.prefs.any_som and not endpoints[src] and not endpoints[dst] then
        return 0
    end
    endpoints[src] = true
    endpoints[dst] = true
    set_info(pinfo, dissect_som(tvb, pinfo, tree, true))
    return tvb:len()
end

-- TLS-over-TCP records, handed over by the TLS dissector (ALPN natter/1) once decrypted.
local function read_varint(tvb, offset, limit)
    local value = UInt64(0)
    local shift = 0
    while offset < limit and shift < 64 do
        local byte = tvb(offset, 1):uint()
        value = value + UInt64(bit.band(byte, 0x7F)):lshift(shift)
        offset = offset + 1
        if bit.band(byte, 0x80) == 0 then
            return value, offset
        end
        shift = shift + 7
    end
    return nil, offset
end

-- The envelope's version, request id and body (its field number names the message).
local function dissect_envelope(tvb, tree)
    local offset = 0
    local limit = tvb:len()
    local name = "envelope"
    while offset < limit do
        local start = offset
        local key
        key, offset = read_varint(tvb, offset, limit)
        if key == nil then
            tree:add_proto_expert_info(ef_malformed, "truncated protobuf key")
            return name
        end
        local field = key:rshift(3):tonumber()
        local wire = key:band(7):tonumber()
        if wire == 0 then
            local value
            value, offset = read_varint(tvb, offset, limit)
            if value == nil then
                tree:add_proto_expert_info(ef_malformed, "truncated varint")
                return name
            end
            if field == 1 then
                tree:add(f.env_version, tvb(start, offset - start), value:tonumber())
            elseif field == 2 then
                tree:add(f.env_request, tvb(start, offset - start), value)
            end
        elseif wire == 2 then
            local len
            len, offset = read_varint(tvb, offset, limit)
            if len == nil or offset + len:tonumber() > limit then
                tree:add_proto_expert_info(ef_malformed, "truncated length-delimited field")
                return name
            end
            local n = len:tonumber()
            local item = tree:add(f.env_type, tvb(start, offset - start + n), field)
            if n > 0 then
                item:add(f.env_body, tvb(offset, n))
            end
            name = MESSAGES[field] or string.format("message %d", field)
            offset = offset + n
        else
            tree:add_proto_expert_info(ef_malformed, "unexpected protobuf wire type")
            return name
        end
    end
    return name
end

local function dissect_records(tvb, pinfo, tree)
    local offset = 0
    local len = tvb:len()
    local names = {}
    while offset < len do
        if len - offset < 5 then
            pinfo.desegment_offset = offset
            pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
            break
        end
        local kind = tvb(offset, 1):uint()
        local body_len = tvb(offset + 1, 4):uint()
        local max = RECORD_MAX[kind]
        if max == nil or body_len > max then
            local sub = tree:add(natter, tvb(offset), "Natter record")
            sub:add(f.rec_kind, tvb(offset, 1))
            sub:add_proto_expert_info(ef_malformed, "unknown record kind or length out of range")
            table.insert(names, "malformed record")
            offset = len
            break
        end
        if len - offset < 5 + body_len then
            pinfo.desegment_offset = offset
            pinfo.desegment_len = 5 + body_len - (len - offset)
            break
        end
        local sub = tree:add(natter, tvb(offset, 5 + body_len), "Natter record")
        sub:add(f.kind, "record"):set_generated()
        sub:add(f.rec_kind, tvb(offset, 1))
        sub:add(f.rec_len, tvb(offset + 1, 4))
        local body = tvb(offset + 5, body_len):tvb()
        if kind == 0x01 then
            sub:append_text(", ENVELOPE")
            table.insert(names, dissect_envelope(body, sub))
        elseif kind == 0x02 then
            sub:append_text(", DATAGRAM")
            if is_relay(body) then
                table.insert(names, dissect_relay(body, pinfo, sub))
            elseif body_len >= SOM_HEADER then
                table.insert(names, dissect_som(body, pinfo, sub, false))
            else
                sub:add_proto_expert_info(ef_malformed, "datagram shorter than a SoM header")
            end
        elseif kind == 0x03 then
            sub:append_text(", CLOSE")
            if body_len < 4 then
                sub:add_proto_expert_info(ef_malformed, "CLOSE shorter than its code")
            else
                sub:add(f.close_code, tvb(offset + 5, 4))
                sub:add(f.close_reason, tvb(offset + 9, body_len - 4))
            end
            table.insert(names, "CLOSE")
        else
            sub:append_text(", KEEPALIVE")
            table.insert(names, "KEEPALIVE")
        end
        offset = offset + 5 + body_len
    end
    if #names > 0 then
        pinfo.cols.protocol = "Natter/TLS"
        pinfo.cols.info = table.concat(names, ", ")
    end
    return offset
end

-- QUIC stream data, handed over by the QUIC dissector (ALPN natter/1) once decrypted:
-- length-prefixed envelope frames (PROTOCOL.md section 2).
local function dissect_frames(tvb, pinfo, tree)
    local offset = 0
    local len = tvb:len()
    local names = {}
    while offset < len do
        if len - offset < 4 then
            pinfo.desegment_offset = offset
            pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
            break
        end
        local frame_len = tvb(offset, 4):uint()
        if frame_len == 0 or frame_len > 65536 then
            local sub = tree:add(natter, tvb(offset), "Natter frame")
            sub:add_proto_expert_info(ef_malformed, "frame length 0 or over 65536")
            table.insert(names, "malformed frame")
            offset = len
            break
        end
        if len - offset < 4 + frame_len then
            pinfo.desegment_offset = offset
            pinfo.desegment_len = 4 + frame_len - (len - offset)
            break
        end
        local sub = tree:add(natter, tvb(offset, 4 + frame_len), "Natter frame")
        sub:add(f.kind, "frame"):set_generated()
        sub:add(f.frame_len, tvb(offset, 4))
        table.insert(names, dissect_envelope(tvb(offset + 4, frame_len):tvb(), sub))
        offset = offset + 4 + frame_len
    end
    if #names > 0 then
        pinfo.cols.protocol = "Natter/QUIC"
        pinfo.cols.info = table.concat(names, ", ")
    end
    return offset
end

function natter.dissector(tvb, pinfo, tree)
    if quic_stream() ~= nil then
        return dissect_frames(tvb, pinfo, tree)
    end
    if tcp_stream() ~= nil then
        return dissect_records(tvb, pinfo, tree)
    end
    return dissect_udp(tvb, pinfo, tree, false)
end

local function heuristic(tvb, pinfo, tree)
    local taken = dissect_udp(tvb, pinfo, tree, true)
    if taken == 0 then
        return false
    end
    -- Later datagrams of this flow come straight here, before any port-based dissector.
    pinfo.conversation = natter
    return true
end

natter:register_heuristic("udp", heuristic)
DissectorTable.get("tls.alpn"):add("natter/1", natter)
local quic_proto = DissectorTable.get("quic.proto")
if quic_proto then
    quic_proto:add("natter/1", natter)
end
