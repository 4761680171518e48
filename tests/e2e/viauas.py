#!/usr/bin/env python3
"""A media-server stand-in that answers like FreeSWITCH over UDP: every reply goes to the
top Via (its received/rport when present, RFC 3261 §18.2.2 and RFC 3581), not to the
address the call's first request came from as SIPp does. So a call set up through one
proxy node and ended through another is answered through the node that sent the BYE, even
when the first node is gone.

INVITE -> 180, 200 (Record-Route copied, a To tag, SDP); ACK -> nothing; BYE, OPTIONS and
anything else -> 200. Runs until SECONDS have passed (bounded) or it is killed.
Usage: viauas.py PORT SECONDS"""
import socket
import sys
import time

port, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
s.bind(("127.0.0.1", port))
SDP = f"v=0\r\no=fs 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port + 1000} RTP/AVP 0\r\n"


def reply_target(via):
    """The address a reply to a request with top Via `via` goes to."""
    sent_by, _, params = via.partition(";")
    hostport = sent_by.split()[-1]
    host, _, p = hostport.rpartition(":") if hostport.count(":") == 1 else (hostport, "", "5060")
    prm = dict((kv.split("=", 1) + [""])[:2] for kv in params.split(";") if kv)
    return prm.get("received") or host, int(prm.get("rport") or p or 5060)


end = time.time() + seconds
while time.time() < end:
    s.settimeout(max(0.05, end - time.time()))
    try:
        data = s.recv(65535).decode(errors="replace")
    except socket.timeout:
        continue
    head, _, _ = data.partition("\r\n\r\n")
    lines = head.split("\r\n")
    if not lines or lines[0].startswith("SIP/2.0"):
        continue
    method = lines[0].split(" ", 1)[0]
    if method == "ACK":
        continue
    keep = []
    for line in lines[1:]:
        k = line.split(":", 1)[0].strip().lower()
        if k in ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq", "record-route"):
            keep.append(line)
    vias = [line.split(":", 1)[1].strip() for line in lines[1:] if line.split(":", 1)[0].strip().lower() in ("via", "v")]
    if not vias:
        continue
    target = reply_target(vias[0].split(",")[0].strip())
    tag = f"fs{abs(hash(data.split('Call-ID:')[-1][:80])) % 10**8}"

    def reply(status, body=""):
        out = []
        for line in keep:
            if line.split(":", 1)[0].strip().lower() in ("to", "t") and ";tag=" not in line:
                line += f";tag={tag}"
            out.append(line)
        out.append(f"Contact: <sip:127.0.0.1:{port}>")
        if body:
            out.append("Content-Type: application/sdp")
        out.append(f"Content-Length: {len(body)}")
        s.sendto(("SIP/2.0 " + status + "\r\n" + "\r\n".join(out) + "\r\n\r\n" + body).encode(), target)

    if method == "INVITE":
        reply("180 Ringing")
        reply("200 OK", SDP)
    else:
        keep = [k for k in keep if not k.lower().startswith("record-route")]
        reply("200 OK")
