#!/usr/bin/env python3
"""A minimal NG client for the media suite: sends one command to rtpengine and prints the
reply as JSON (bencode byte strings decoded as UTF-8 where they can be).

  ngcli.py HOST:PORT COMMAND [key=value ...]     e.g. ngcli.py 127.0.0.1:2223 query call-id=abc
  ngcli.py HOST:PORT raw BYTES                   send BYTES as they are (hostile input)
"""
import json
import os
import socket
import sys


def enc(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(enc(x) for x in v) + b"e"
    if isinstance(v, dict):
        return b"d" + b"".join(enc(k) + enc(v[k]) for k in sorted(v)) + b"e"
    raise TypeError(v)


def dec(b, i=0):
    c = b[i:i + 1]
    if c == b"i":
        j = b.index(b"e", i)
        return int(b[i + 1:j]), j + 1
    if c == b"l":
        out, i = [], i + 1
        while b[i:i + 1] != b"e":
            v, i = dec(b, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        out, i = {}, i + 1
        while b[i:i + 1] != b"e":
            k, i = dec(b, i)
            v, i = dec(b, i)
            out[k] = v
        return out, i + 1
    j = b.index(b":", i)
    n = int(b[i:j])
    s = b[j + 1:j + 1 + n]
    try:
        s = s.decode()
    except UnicodeDecodeError:
        s = repr(s)
    return s, j + 1 + n


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    cookie = os.urandom(6).hex()
    if sys.argv[2] == "raw":
        s.sendto(sys.argv[3].encode(), (host, int(port)))
        return
    d = {"command": sys.argv[2]}
    for kv in sys.argv[3:]:
        k, v = kv.split("=", 1)
        d[k] = v
    s.sendto(cookie.encode() + b" " + enc(d), (host, int(port)))
    data, _ = s.recvfrom(65535)
    c, body = data.split(b" ", 1)
    if c.decode() != cookie:
        sys.exit("cookie mismatch")
    v, _ = dec(body)
    print(json.dumps(v))


if __name__ == "__main__":
    main()
