#!/usr/bin/env python3
"""One INVITE with an SDP body to the proxy (over UDP, from SRC_PORT on 127.0.0.1); prints
the final status line and how long it took, e.g. "488 Not Acceptable Here ... 0.004".
ACKs a non-2xx; a 2xx is ACKed and hung up (BYE) at once.
Usage: mediareq.py PROXY_PORT SRC_PORT REQUEST_URI SDP_KIND [WAIT_S]
SDP_KIND: garbage (text rtpengine cannot parse), plain (a PCMU offer from 127.0.0.1)."""
import socket
import sys
import time

port, src_port, ruri, kind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
wait = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
SDPS = {
    "garbage": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio notaport RTP/AVP x\r\n",
    "plain": f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {src_port + 2} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
}
sdp = SDPS[kind]
call = f"mediareq-{time.time_ns()}"
me = f"127.0.0.1:{src_port}"


def req(method, uri, cseq, branch, extra=(), body=""):
    lines = [f"{method} {uri} SIP/2.0", f"Via: SIP/2.0/UDP {me};branch={branch}",
             f"From: <sip:caller@127.0.0.1>;tag=mr1", f"To: <{ruri}>{extra[0] if extra else ''}",
             f"Call-ID: {call}", f"CSeq: {cseq} {method}", f"Contact: <sip:caller@{me}>",
             "Max-Forwards: 70"] + list(extra[1:])
    if body:
        lines += ["Content-Type: application/sdp", f"Content-Length: {len(body)}", "", body]
    else:
        lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", src_port))
t0 = time.time()
s.sendto(req("INVITE", ruri, 1, "z9hG4bK-" + call, body=sdp), ("127.0.0.1", port))
end = t0 + wait
while True:
    s.settimeout(max(0.01, end - time.time()))
    try:
        data, _ = s.recvfrom(65535)
    except socket.timeout:
        print("timeout")
        sys.exit(1)
    text = data.decode(errors="replace")
    first = text.split("\r\n", 1)[0]
    if not first.startswith("SIP/2.0 ") or " INVITE" not in text.split("CSeq:", 1)[-1].split("\r\n", 1)[0]:
        continue
    code = int(first.split()[1])
    if code < 200:
        continue
    took = time.time() - t0
    hdr = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in text.split("\r\n\r\n")[0].split("\r\n")[1:] if ":" in l}
    tag = ";" + hdr["to"].split(";", 1)[1] if ";" in hdr.get("to", "") else ""
    if code >= 300:
        s.sendto(req("ACK", ruri, 1, "z9hG4bK-" + call, (tag,)), ("127.0.0.1", port))
    else:
        routes = [l.split(":", 1)[1].strip() for l in text.split("\r\n") if l.lower().startswith("record-route:")]
        route = [f"Route: {r}" for r in reversed(routes)]
        contact = hdr.get("contact", "").strip("<>").split(">")[0]
        s.sendto(req("ACK", contact, 1, "z9hG4bK-a" + call, (tag, *route)), ("127.0.0.1", port))
        # the proxy's receive threads may pass on two datagrams sent back to back in either
        # order; a callee that gets the BYE before the ACK counts its call as failed
        time.sleep(0.1)
        s.sendto(req("BYE", contact, 2, "z9hG4bK-b" + call, (tag, *route)), ("127.0.0.1", port))
    print(f"{first[8:]} {took:.3f}")
    sys.exit(0)
