#!/usr/bin/env python3
"""Sends one command to baresip's ctrl_tcp module and prints what comes back.

Usage: bsctl.py PORT "command [params]" [seconds]

ctrl_tcp speaks JSON in netstrings (`LEN:JSON,`): we send {"command", "params", "token"}
and print every reply and event (CALL_RINGING, CALL_ESTABLISHED, ...) that arrives within
`seconds` (1 by default), one JSON object a line. Exits 1 when the connection fails.
"""
import json
import socket
import sys
import time


def frames(buf):
    """Splits complete netstrings off `buf`; returns (messages, rest)."""
    out = []
    while True:
        colon = buf.find(b":")
        if colon < 0 or not buf[:colon].isdigit():
            return out, buf
        n = int(buf[:colon])
        end = colon + 1 + n
        if len(buf) < end + 1:
            return out, buf
        out.append(json.loads(buf[colon + 1:end]))
        buf = buf[end + 1:]


def main():
    port, line = int(sys.argv[1]), sys.argv[2]
    wait = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    cmd, _, params = line.partition(" ")
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=3)
    except OSError as e:
        print(f"cannot connect to 127.0.0.1:{port}: {e}", file=sys.stderr)
        return 1
    body = json.dumps({"command": cmd, "params": params, "token": "sb"}).encode()
    s.sendall(str(len(body)).encode() + b":" + body + b",")
    s.settimeout(0.2)
    buf, deadline = b"", time.time() + wait
    while time.time() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        msgs, buf = frames(buf + chunk)
        for m in msgs:
            print(json.dumps(m), flush=True)
    s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
