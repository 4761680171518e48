#!/usr/bin/env python3
"""A call set up through one proxy node and ended through another: INVITE to FIRST_PORT,
ACK along the route set, HOLD_S seconds, then the BYE (same route set) sent to BYE_PORT.
Prints "answered <code>" and "bye <code>" (or "timeout"); exits 0 when both are 200.
Usage: dlgcall.py SRC_PORT FIRST_PORT BYE_PORT HOLD_S"""
import socket
import sys
import time

from sipmsg import headers

src, first, bye_port, hold = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
call = f"dlgcall-{time.time_ns()}"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", src))


def wait(want_method_cseq, deadline):
    while True:
        s.settimeout(max(0.01, deadline - time.time()))
        try:
            data = s.recv(65535).decode(errors="replace")
        except socket.timeout:
            return None
        if not data.startswith("SIP/2.0 "):
            continue
        if want_method_cseq in (headers(data, "cseq") or [""])[0] and int(data.split(" ")[1]) >= 200:
            return data


sdp = "v=0\r\no=u 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"
common = [f"From: <sip:caller@example.net>;tag=c{src}", f"Call-ID: {call}", "Max-Forwards: 70"]
inv = "\r\n".join(
    [f"INVITE sip:svc@127.0.0.1:{first} SIP/2.0", f"Via: SIP/2.0/UDP 127.0.0.1:{src};branch=z9hG4bK-{call}-i;rport"]
    + common
    + ["To: <sip:svc@127.0.0.1>", "CSeq: 1 INVITE", f"Contact: <sip:caller@127.0.0.1:{src}>",
       "Content-Type: application/sdp", f"Content-Length: {len(sdp)}", "", sdp]
)
s.sendto(inv.encode(), ("127.0.0.1", first))
ok = wait("INVITE", time.time() + 8)
if ok is None:
    print("timeout")
    sys.exit(1)
code = int(ok.split(" ")[1])
print("answered", code)
if code != 200:
    sys.exit(1)
to = headers(ok, "to")[0]
routes = headers(ok, "record-route")
contact = headers(ok, "contact")[0].strip("<>").split(">")[0]
route_lines = [f"Route: {r}" for r in routes]


def request(method, seq, branch):
    return "\r\n".join(
        [f"{method} {contact} SIP/2.0", f"Via: SIP/2.0/UDP 127.0.0.1:{src};branch=z9hG4bK-{call}-{branch};rport"]
        + route_lines + common + [f"To: {to}", f"CSeq: {seq} {method}", "Content-Length: 0", "", ""]
    )


s.sendto(request("ACK", 1, "a").encode(), ("127.0.0.1", first))
time.sleep(hold)
s.sendto(request("BYE", 2, "b").encode(), ("127.0.0.1", bye_port))
r = wait("BYE", time.time() + 8)
if r is None:
    print("bye timeout")
    sys.exit(1)
code = int(r.split(" ")[1])
print("bye", r.split("\r\n", 1)[0])
sys.exit(0 if code == 200 else 1)
