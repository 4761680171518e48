#!/usr/bin/env python3
"""One INVITE from a media server's address through the proxy, Route naming the proxy:
prints the final status line it gets (or "timeout"), and ACKs a non-2xx answer.
Usage: sipreq.py PROXY_PORT SRC_IP SRC_PORT REQUEST_URI [WAIT_S]"""
import socket
import sys
import time

port, src_ip, src_port, ruri = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
wait = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
call = f"sipreq-{time.time_ns()}"
branch = "z9hG4bK-" + call
head = [
    f"Via: SIP/2.0/UDP {src_ip}:{src_port};branch={branch}",
    f"From: <sip:fs@{src_ip}>;tag=f1",
    "To: <sip:x@example>",
    f"Call-ID: {call}",
]
inv = "\r\n".join(
    [f"INVITE {ruri} SIP/2.0", f"Route: <sip:127.0.0.1:{port};lr>"]
    + head
    + ["CSeq: 1 INVITE", "Max-Forwards: 70", "Content-Length: 0", "", ""]
)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src_ip, src_port))
s.sendto(inv.encode(), ("127.0.0.1", port))
end = time.time() + wait
while True:
    s.settimeout(max(0.01, end - time.time()))
    try:
        data = s.recv(65535).decode(errors="replace")
    except socket.timeout:
        print("timeout")
        sys.exit(1)
    line = data.split("\r\n", 1)[0]
    code = int(line.split(" ")[1])
    if code >= 200:
        if code >= 300:
            to = [l for l in data.split("\r\n") if l.lower().startswith("to:")][0]
            ack = "\r\n".join(
                [f"ACK {ruri} SIP/2.0", f"Route: <sip:127.0.0.1:{port};lr>"]
                + head[:3] + [to, head[3], "CSeq: 1 ACK", "Max-Forwards: 70", "Content-Length: 0", "", ""]
            )
            s.sendto(ack.encode(), ("127.0.0.1", port))
        print(line)
        sys.exit(0)
