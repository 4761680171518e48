#!/usr/bin/env python3
"""A hostile stand-in for rtpengine's NG port: answers every command the way MODE says.
Usage: fakeng.py PORT MODE_FILE  (the mode is read from MODE_FILE for each datagram:
garbage: bytes that are not NG; silent: nothing; error: result=error with a reason;
nosdp: result=ok without an SDP; pong: a well-formed pong to everything)"""
import socket
import sys

port, mode_file = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", port))
while True:
    data, peer = s.recvfrom(65535)
    try:
        mode = open(mode_file).read().strip()
    except OSError:
        mode = "silent"
    cookie = data.split(b" ", 1)[0]
    if b"4:ping" in data and mode != "silent":
        s.sendto(cookie + b" d6:result4:ponge", peer)
    elif mode == "garbage":
        s.sendto(b"\x00\xff garbage \x7f" * 20, peer)
    elif mode == "error":
        s.sendto(cookie + b" d12:error-reason19:Failed to parse SDP6:result5:errore", peer)
    elif mode == "nosdp":
        s.sendto(cookie + b" d6:result2:oke", peer)
    elif mode == "pong":
        s.sendto(cookie + b" d6:result4:ponge", peer)
