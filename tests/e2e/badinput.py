#!/usr/bin/env python3
"""Malformed input against a running switchboard (UDP and TCP): each message must get the
expected status (or no answer when no Via can be read), and the proxy must keep serving.
Usage: badinput.py PROXY_PORT. Prints one line per case; exits 1 on any failure."""
import os
import socket
import sys

PORT = int(sys.argv[1])
HOST = "127.0.0.1"
fails = 0


def req(call_id="bad-1", extra="", body="", cl=None, drop=None, cseq="1 OPTIONS", method="OPTIONS"):
    lines = [
        f"{method} sip:svc@{HOST}:{PORT} SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-" + call_id,
        "From: <sip:a@h>;tag=1",
        "To: <sip:b@h>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq}",
        "Max-Forwards: 70",
    ]
    if drop:
        lines = [l for l in lines if not l.startswith(drop)]
    if extra:
        lines.append(extra)
    lines.append(f"Content-Length: {len(body) if cl is None else cl}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def udp_exchange(data, wait=1.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(wait)
    s.sendto(data, (HOST, PORT))
    try:
        return s.recv(65535).decode(errors="replace")
    except socket.timeout:
        return None
    finally:
        s.close()


def check(name, got, want):
    global fails
    status = None if got is None else got.split("\r\n", 1)[0]
    ok = (want is None and got is None) or (want is not None and status is not None and status.startswith(f"SIP/2.0 {want}"))
    if not ok:
        fails += 1
    print(f"{'ok  ' if ok else 'FAIL'} {name}: got {status!r}, want {want}")


check("random bytes are dropped", udp_exchange(os.urandom(300), 0.5), None)
check("truncated message (no end of headers) gets 400", udp_exchange(req("t1")[:-30]), 400)
for h in ["Call-ID", "CSeq", "From", "To"]:
    r = udp_exchange(req("m-" + h, drop=h + ":"))
    check(f"missing {h} gets 400", r, 400)
    if r and h.lower() not in r.split("\r\n", 1)[0].lower():
        print(f"FAIL reason does not name {h}: {r.splitlines()[0]!r}")
        fails += 1
check("Content-Length larger than body gets 400", udp_exchange(req("cl1", body="abc", cl=99)), 400)
check("Content-Length not a number gets 400", udp_exchange(req("cl2", cl="x")), 400)
check("NUL in a header gets 400", udp_exchange(req("nul1", extra="X-Evil: a\x00b")), 400)
big = req("big1", extra="X-Pad: " + "a" * 20000)
check("message over max_message_size gets 513", udp_exchange(big), 513)
check("CSeq method mismatch gets 400", udp_exchange(req("cs1", cseq="1 INVITE")), 400)
check("bad SIP version gets 505", udp_exchange(req("v1").replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1)), 505)
check("unknown URI scheme gets 416", udp_exchange(req("u1", method="OPTIONS").replace(f"sip:svc@{HOST}:{PORT}".encode(), b"foo:bar", 1)), 416)
check("Max-Forwards 0 gets 483", udp_exchange(req("mf0").replace(b"Max-Forwards: 70", b"Max-Forwards: 0")), 483)
check("Proxy-Require gets 420", udp_exchange(req("pr1", extra="Proxy-Require: x-foo")), 420)

# TCP: a stream whose Content-Length is garbage gets 400 and the connection is closed
t = socket.create_connection((HOST, PORT), timeout=2)
t.sendall(req("tcp1").replace(b"UDP 127.0.0.1:9", b"TCP 127.0.0.1:9").replace(b"Content-Length: 0", b"Content-Length: -5"))
try:
    data = t.recv(65535).decode(errors="replace")
except socket.timeout:
    data = None
check("TCP bad Content-Length gets 400", data or None, 400)
t.close()

# the proxy still serves: OPTIONS to itself is answered 200
opt = req("alive", method="OPTIONS").replace(f"sip:svc@{HOST}:{PORT}".encode(), f"sip:{HOST}:{PORT}".encode(), 1)
check("proxy still answers after bad input", udp_exchange(opt), 200)
sys.exit(1 if fails else 0)
