#!/usr/bin/env python3
"""A stand-in for FreeSWITCH's event socket (mod_event_socket), for the balancer's live-load
tests: it greets with auth/request, accepts `auth PASSWORD` (anything else gets -ERR and a
disconnect notice), accepts `event plain HEARTBEAT`, then sends a HEARTBEAT event whenever
the state file changes and at least every second.

    esl-standin.py PORT PASSWORD STATE_FILE

STATE_FILE holds "MAX_SESSIONS SESSION_COUNT IDLE_CPU" (e.g. "100 20 97.5"), or "garbage"
for a malformed heartbeat. Listens on 127.0.0.1 only and exits after 10 minutes at most.
"""
import socket
import sys
import threading
import time
import urllib.parse

PORT, PASSWORD, STATE = int(sys.argv[1]), sys.argv[2], sys.argv[3]
DEADLINE = time.time() + 600


def state():
    try:
        return open(STATE).read().split()
    except OSError:
        return None


def heartbeat(fields):
    if fields == ["garbage"]:
        pairs = [("Event-Name", "HEARTBEAT"), ("Session-Count", "many"),
                 ("Max-Sessions", "100"), ("Idle-CPU", "50")]
    else:
        mx, count, idle = fields
        pairs = [("Event-Name", "HEARTBEAT"), ("Core-UUID", "standin"),
                 ("Event-Info", "System Ready"), ("Up-Time", "0 years, 0 days"),
                 ("Session-Count", count), ("Max-Sessions", mx),
                 ("Session-Per-Sec", "30"), ("Idle-CPU", idle)]
    body = "".join(f"{k}: {urllib.parse.quote(v)}\n" for k, v in pairs)
    return f"Content-Length: {len(body)}\nContent-Type: text/event-plain\n\n{body}".encode()


def read_command(f):
    lines = []
    while time.time() < DEADLINE:
        line = f.readline()
        if not line:
            return None
        line = line.decode(errors="replace").rstrip("\r\n")
        if line == "":
            if lines:
                return lines[0]
            continue
        lines.append(line)
    return None


def serve(conn):
    f = conn.makefile("rb")
    try:
        conn.sendall(b"Content-Type: auth/request\n\n")
        if read_command(f) != f"auth {PASSWORD}":
            conn.sendall(b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n")
            conn.sendall(b"Content-Type: text/disconnect-notice\nContent-Length: 0\n\n")
            return
        conn.sendall(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")
        cmd = read_command(f)
        if cmd is None or not cmd.startswith("event plain"):
            conn.sendall(b"Content-Type: command/reply\nReply-Text: -ERR command not found\n\n")
            return
        conn.sendall(b"Content-Type: command/reply\nReply-Text: +OK event listener enabled plain\n\n")
        last, sent_at = None, 0.0
        while time.time() < DEADLINE:
            s = state()
            if s and (s != last or time.time() - sent_at >= 1.0):
                conn.sendall(heartbeat(s))
                last, sent_at = s, time.time()
            time.sleep(0.1)
    except OSError:
        pass
    finally:
        conn.close()


def main():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", PORT))
    srv.listen(8)
    srv.settimeout(1.0)
    while time.time() < DEADLINE:
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


main()
