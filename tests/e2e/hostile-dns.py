#!/usr/bin/env python3
"""A hostile DNS server on loopback for the names dnsmasq forwards to it: every query for a
name ending in loop1.hostile.test (or loop2.hostile.test) is answered with a CNAME loop
(NAME -> loop2.hostile.test -> NAME), an SRV query for other _sip._udp names with an SRV whose target is ".", anything
else with NXDOMAIN.
Usage: hostile-dns.py PORT (runs until killed; at most 100000 queries)."""
import socket
import struct
import sys

port = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", port))


def name_bytes(n):
    return b"".join(bytes([len(p)]) + p.encode() for p in n.strip(".").split(".")) + b"\0"


def read_name(d, i):
    parts = []
    while d[i]:
        parts.append(d[i + 1 : i + 1 + d[i]].decode())
        i += 1 + d[i]
    return ".".join(parts), i + 1


for _ in range(100000):
    d, peer = s.recvfrom(2048)
    if len(d) < 12:
        continue
    tid = d[:2]
    name, i = read_name(d, 12)
    qtype, qclass = struct.unpack(">HH", d[i : i + 4])
    question = d[12 : i + 4]
    answers = []
    rcode = 0
    ln = name.lower()
    if ln.endswith("loop1.hostile.test") or ln == "loop2.hostile.test":
        other = "loop1.hostile.test" if ln == "loop2.hostile.test" else "loop2.hostile.test"
        for a, b in ((ln, other), (other, ln)):
            target = name_bytes(b)
            answers.append(name_bytes(a) + struct.pack(">HHIH", 5, 1, 60, len(target)) + target)
    elif ln.startswith("_sip._udp.") and qtype == 33:
        rdata = struct.pack(">HHH", 0, 0, 0) + b"\0"
        answers.append(name_bytes(ln) + struct.pack(">HHIH", 33, 1, 60, len(rdata)) + rdata)
    else:
        rcode = 3
    flags = 0x8400 | 0x0080 | rcode
    hdr = tid + struct.pack(">HHHHH", flags, 1, len(answers), 0, 0)
    s.sendto(hdr + question + b"".join(answers), peer)
