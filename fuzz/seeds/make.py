#!/usr/bin/env python3
"""Writes the committed seed corpora (fuzz/corpus/<target>/) from the spec vectors and the unit
tests' vectors. Deterministic: rerun after changing a target's input layout, commit the result.
Usage: python3 fuzz/seeds/make.py   (from the repository root)"""
import hashlib, os, re, shutil, struct

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def hx(s):
    return bytes.fromhex("".join(c for c in s if c in "0123456789abcdefABCDEF"))


def write(target, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


for t in ["packet", "ws_frame", "http_upgrade", "drpc", "config", "proxy_header"]:
    shutil.rmtree(os.path.join(CORPUS, t), ignore_errors=True)

# packet: config byte = order(bit 0) | route idx [1,2,4,2] << 1 | seq idx [0,1,2,4] << 3 |
# bufferBytes idx [0,2,16,5000] << 5 | heartbeatTime << 7; then a cuts byte; then the stream.
ROUTE = {1: 0, 2: 1, 4: 2}
SEQ = {0: 0, 1: 1, 2: 2, 4: 3}
# client-protocol.md §9.2 D1-D24 (route 1, seq 2, "hi").
for order in (0, 1):
    for r in (1, 2, 4):
        for s in (0, 1, 2, 4):
            body = b"\x00" + (1).to_bytes(r, "big" if order == 0 else "little", signed=True)
            body += ((2).to_bytes(s, "big" if order == 0 else "little", signed=True) if s else b"") + b"hi"
            size = len(body).to_bytes(4, "big" if order == 0 else "little")
            cfg = order | ROUTE[r] << 1 | SEQ[s] << 3 | 3 << 5
            write("packet", bytes([cfg, 0]) + size + body)
# §9.4 heartbeats, §9.5 classification, §9.6 coalesced/partial, cap edge.
BE22 = 1 << 1 | 2 << 3 | 3 << 5
for v in ["00000001 80", "00000009 80 1816687ec0570000", "00000001 ff", "00000001 00",
          "00000007 7f 0001 0002 6869", "00000000",
          "00000007 00 0001 0002 6869 00000001 80 00000005 00 fffe ffff",
          "0000138d 00 0001 0001", "0000138e", "ffffffff"]:
    write("packet", bytes([BE22, 5]) + hx(v))
write("packet", bytes([1 | 2 << 1 | 3 << 3 | 3 << 5, 1]) + hx("0a000000 00 04030201 feffffff aa"))

# ws_frame: cap byte (idx into [0,1,125,126,300,5009,65536,1M]), cuts byte, client frames.
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])


def ws(b0, payload, masked=True):
    n = len(payload)
    m = 0x80 if masked else 0
    if n < 126:
        h = bytes([b0, m | n])
    elif n <= 0xFFFF:
        h = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        h = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if not masked:
        return h + payload
    return h + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


PKT = hx("00000007 00 0001 0002 6869")
for data in [
    ws(0x82, PKT),
    ws(0x82, PKT) + ws(0x89, b"ping") + ws(0x8A, b"") + ws(0x82, b"\x00\x00\x00\x01\x80"),
    ws(0x02, PKT[:3]) + ws(0x89, b"p") + ws(0x00, PKT[3:6]) + ws(0x80, PKT[6:]),
    ws(0x01, b"text") + ws(0x80, b"more") + ws(0x81, b"x" * 200) + ws(0x82, PKT),
    ws(0x82, bytes(300)),
    ws(0x88, struct.pack(">H", 1000) + b"bye"),
    ws(0x88, b""),
    ws(0x88, struct.pack(">H", 1005)),
    ws(0x88, struct.pack(">H", 1000) + b"\xff"),
    ws(0x82, PKT, masked=False),
    ws(0xC2, PKT), ws(0x83, b""), ws(0x09, b""), ws(0x89, bytes(126)), ws(0x80, b"x"),
    ws(0x02, b"a") + ws(0x82, b"b"),
]:
    write("ws_frame", bytes([5, 7]) + data)
write("ws_frame", bytes([4, 0]) + ws(0x82, bytes(300)) + ws(0x82, b"x"))
write("ws_frame", bytes([6, 3]) + bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 63) + MASK)

# http_upgrade: rules byte (path idx [/, /ws, /ws/, /a/b] | origins idx << 2), request head.
REQ = ("GET {path} HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
       "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
       "Origin: http://a.example\r\nSec-WebSocket-Version: 13\r\n\r\n")
for rules, path in [(1, "/ws"), (0, "/chat?x=1"), (2, "/ws"), (2, "/ws/x"), (1, "/other"), (5, "/ws"),
                    (9, "/ws")]:
    write("http_upgrade", bytes([rules]) + REQ.format(path=path).encode())
write("http_upgrade", bytes([1]) + REQ.format(path="/ws").replace("GET", "POST").encode())
write("http_upgrade", bytes([1]) + REQ.format(path="/ws").replace("13", "8").encode())
write("http_upgrade", bytes([1]) + b"GET /ws HTTP/1.1\r\n" + b"X: y\r\n" * 70 + b"\r\n")
write("http_upgrade", bytes([1]) + b"GARBAGE\r\n\r\n")

# drpc: max byte (0 = MAX_LINK_FRAME), cuts byte, link frames: every hex vector of the drpc
# modules' tests (cluster-protocol.md §10.2, §10.3).
P = "00000010 00 0001 0002 68656c6c6f20776f726c64"
frames = []
for name in sorted(os.listdir(os.path.join(ROOT, "src", "drpc"))):
    text = open(os.path.join(ROOT, "src", "drpc", name)).read()
    for m in re.findall(r'"([0-9a-f]{8} [0-9a-f <P>]+)"', text):
        frames.append(hx(m.replace("<P>", P)))
for f in frames:
    write("drpc", bytes([0, 3]) + f)
write("drpc", bytes([0, 0]) + b"".join(frames))
write("drpc", bytes([0, 0]) + hx("00000000"))
write("drpc", bytes([1, 0]) + hx("7fffffff"))

# config: format byte (idx into [toml, yaml, json, xml, yml]; bit 7 = mode override), file.
load_rs = open(os.path.join(ROOT, "src", "config", "load.rs")).read()
for fmt, idx in [("TOML", 0), ("YAML", 1), ("JSON", 2), ("XML", 3)]:
    m = re.search(r'const EXAMPLE_%s: &str = r#"(.*?)"#;' % fmt, load_rs, re.S)
    write("config", bytes([idx]) + m.group(1).encode())
example = os.path.join(ROOT, "etc")
for dirpath, _, files in os.walk(example):
    for f in sorted(files):
        ext = f.rsplit(".", 1)[-1].lower()
        idx = {"toml": 0, "yaml": 1, "yml": 4, "json": 2, "xml": 3}.get(ext)
        if idx is not None:
            data = open(os.path.join(dirpath, f), "rb").read()
            if len(data) < 8192:
                write("config", bytes([idx]) + data)
write("config", bytes([0]) + b"[packet]\nrouteBytes = 3\n")
write("config", bytes([0x80]) + b"[gatehouse]\nproxyProtocol = \"v2\"\nproxyTrusted = [\"10.0.0.0/8\"]\n")

# proxy_header: mode byte (idx into [v1, v2, any]), then the connection's first bytes.
for h in [b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
          b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 3553\r\n",
          b"PROXY TCP6 ::ffff:203.0.113.9 ::1 7 8\r\n",
          b"PROXY UNKNOWN\r\n",
          b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n"]:
    write("proxy_header", bytes([0]) + h + PKT)
    write("proxy_header", bytes([2]) + h)
SIG = b"\r\n\r\n\x00\r\nQUIT\n"
v4 = bytes([192, 168, 0, 1, 192, 168, 0, 11]) + struct.pack(">HH", 56324, 443)
tlv = bytes([0x03]) + struct.pack(">H", 4) + b"\x01\x02\x03\x04"
for cmd, fam, body in [(0x21, 0x11, v4), (0x21, 0x11, v4 + tlv), (0x20, 0x00, b""),
                       (0x21, 0x21, bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack(">HH", 1, 2)),
                       (0x21, 0x31, bytes(216)), (0x21, 0x11, v4 + b"\x03\x00\x09")]:
    h = SIG + bytes([cmd, fam]) + struct.pack(">H", len(body)) + body
    write("proxy_header", bytes([1]) + h + PKT)
    write("proxy_header", bytes([2]) + h)
