#!/usr/bin/env python3
"""Hostile and careless peers for tests/e2e/hardening.sh, all on loopback, every loop bounded
in count and time. Each case prints one line `key=value ...` and exits 0 when it ran.

  hostile.py guess  PORT SRC USER PASSWORD N     REGISTER N times with a wrong password
  hostile.py register PORT SRC USER PASSWORD     one REGISTER with the right one (exit 0 on 200)
  hostile.py flood  PORT SRC RATE SECONDS        OPTIONS at RATE/s from SRC
  hostile.py forged PORT SRC RATE SECONDS        REGISTERs with a forged nonce at RATE/s
  hostile.py tcp-idle PORT SRC N HOLD            N idle connections held HOLD seconds
  hostile.py tcp-burst PORT SRC N                N connects at once: how many complete
  hostile.py tcp-slow PORT SRC                   a byte a second: when is it closed
  hostile.py tcp-noread PORT SRC N               N pipelined requests, never reading
  hostile.py tcp-huge PORT SRC MB                a message of MB megabytes that never ends
"""
import hashlib
import os
import re
import select
import socket
import sys
import time


def md5(s):
    return hashlib.md5(s.encode()).hexdigest()


def register_msg(port, src, sport, user, cseq, call_id, auth=""):
    return (f"REGISTER sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {src}:{sport};branch=z9hG4bK{call_id}{cseq};rport\r\n"
            f"From: <sip:{user}@127.0.0.1>;tag=t{call_id}\r\nTo: <sip:{user}@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{src}:{sport}>\r\n"
            f"Max-Forwards: 70\r\nUser-Agent: desk-phone/1.0\r\n{auth}Content-Length: 0\r\n\r\n").encode()


def answer(challenge, user, password, port):
    realm = re.search(r'realm="([^"]*)"', challenge).group(1)
    nonce = re.search(r'nonce="([^"]*)"', challenge).group(1)
    uri = f"sip:127.0.0.1:{port}"
    ha1 = md5(f"{user}:{realm}:{password}")
    ha2 = md5(f"REGISTER:{uri}")
    cnonce, nc = "0a1b2c3d", "00000001"
    resp = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
    return (f'Authorization: Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{resp}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"\r\n')


def attempt(s, port, src, user, password, tag):
    """One REGISTER and its answer to the challenge: the final status, or None (silence)."""
    sport = s.getsockname()[1]
    call_id = f"{tag}-{os.getpid()}"
    s.sendto(register_msg(port, src, sport, user, 1, call_id), ("127.0.0.1", port))
    try:
        r = s.recv(65535).decode(errors="replace")
    except socket.timeout:
        return None
    if not r.startswith("SIP/2.0 401"):
        return int(r.split()[1])
    ch = next(l for l in r.split("\r\n") if l.lower().startswith("www-authenticate:") and "MD5" in l)
    s.sendto(register_msg(port, src, sport, user, 2, call_id, answer(ch, user, password, port)), ("127.0.0.1", port))
    deadline = time.time() + 9  # a held-back reply comes after up to 8 s
    while time.time() < deadline:
        try:
            r = s.recv(65535).decode(errors="replace")
        except socket.timeout:
            return None
        if f"CSeq: 2 REGISTER" in r:
            return int(r.split()[1])
    return None


def udp(src, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.settimeout(timeout)
    return s


def main():
    case, port, src = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    a = sys.argv[4:]
    if case == "guess":
        user, password, n = a[0], a[1], int(a[2])
        s = udp(src, 1.5)
        answered = 0
        for i in range(n):
            if attempt(s, port, src, user, password, f"g{i}") is None:
                break
            answered += 1
        print(f"attempts={n} answered={answered}")
    elif case == "register":
        s = udp(src, 3)
        code = attempt(s, port, src, a[0], a[1], "ok")
        print(f"status={code}")
        sys.exit(0 if code == 200 else 1)
    elif case in ("flood", "forged"):
        rate, secs = int(a[0]), float(a[1])
        s = udp(src, 0.001)
        s.setblocking(False)
        sent, t0 = 0, time.time()
        while time.time() - t0 < secs and sent < rate * secs * 1.05:
            due = int((time.time() - t0) * rate)
            while sent < due:
                if case == "flood":
                    m = (f"OPTIONS sip:x@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {src}:9;branch=z9hG4bKfl{sent}\r\n"
                         f"From: <sip:f@{src}>;tag=f\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: fl{sent}\r\n"
                         f"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
                else:
                    auth = (f'Authorization: Digest username="u{sent % 1000}", realm="127.0.0.1", '
                            f'nonce="{sent:040x}", uri="sip:127.0.0.1", response="{sent:032x}", algorithm=MD5\r\n')
                    m = register_msg(port, src, 9, f"u{sent % 1000}", 1, f"fn{sent}", auth)
                try:
                    s.sendto(m, ("127.0.0.1", port))
                except BlockingIOError:
                    pass
                sent += 1
            time.sleep(0.0005)
        print(f"sent={sent} seconds={time.time() - t0:.1f}")
    elif case == "tcp-idle":
        n, hold = int(a[0]), float(a[1])
        socks, refused = [], 0
        for _ in range(n):
            c = socket.socket()
            c.bind((src, 0))
            try:
                c.connect(("127.0.0.1", port))
                socks.append(c)
            except OSError:
                refused += 1
                c.close()
        time.sleep(1.0)
        closed_at_once = sum(1 for c in socks if closed(c))
        t0 = time.time()
        open_left = [c for c in socks if not closed(c)]
        held = len(open_left)
        while open_left and time.time() - t0 < hold:
            time.sleep(0.5)
            open_left = [c for c in open_left if not closed(c)]
        print(f"connections={n} held={held} closed_at_once={closed_at_once + refused} open_after_{int(hold)}s={len(open_left)}")
        for c in socks:
            c.close()
    elif case == "tcp-burst":
        n = int(a[0])
        socks = []
        for _ in range(n):
            c = socket.socket()
            c.bind((src, 0))
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            socks.append(c)
        pending, t0 = {c.fileno(): c for c in socks}, time.time()
        p = select.poll()
        for fd in pending:
            p.register(fd, select.POLLOUT)
        while pending and time.time() - t0 < 5:
            for fd, _ in p.poll(200):
                p.unregister(fd)
                pending.pop(fd, None)
        pending = set(pending.values())
        ok = sum(1 for c in socks if c not in pending and c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
        print(f"connects={n} established={ok}")
        for c in socks:
            c.close()
    elif case == "tcp-slow":
        c = socket.create_connection(("127.0.0.1", port), source_address=(src, 0))
        msg = b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP x;branch=z9hG4bKslow\r\n" * 10
        t0, i = time.time(), 0
        while time.time() - t0 < 30:
            try:
                c.send(msg[i:i + 1])
            except OSError:
                break
            i += 1
            time.sleep(1)
            if closed(c):
                break
        print(f"closed_after_s={time.time() - t0:.1f} bytes_sent={i}")
    elif case == "tcp-noread":
        n = int(a[0])
        c = socket.create_connection(("127.0.0.1", port), source_address=(src, 0))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.settimeout(2)
        sent, t0, broken = 0, time.time(), 0
        try:
            for i in range(n):
                m = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/TCP {src}:9;branch=z9hG4bKnr{i}\r\n"
                     f"From: <sip:n@{src}>;tag=n\r\nTo: <sip:127.0.0.1>\r\nCall-ID: nr{i}\r\nCSeq: 1 OPTIONS\r\n"
                     f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
                c.sendall(m)
                sent += 1
                if time.time() - t0 > 30:
                    break
        except OSError:
            broken = 1  # reset, or blocked on a connection the proxy no longer reads
        print(f"requests={n} sent={sent} stopped={broken}")
    elif case == "tcp-huge":
        mb = int(a[0])
        c = socket.create_connection(("127.0.0.1", port), source_address=(src, 0))
        c.settimeout(5)
        c.sendall(b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP x;branch=z9hG4bKhuge\r\nX-Pad: ")
        sent, chunk, t0 = 0, b"a" * 65536, time.time()
        try:
            while sent < mb << 20 and time.time() - t0 < 20:
                c.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        reply = b""
        try:
            reply = c.recv(4096)
        except OSError:
            pass
        status = reply.split(b"\r\n")[0].decode(errors="replace") if reply else "-"
        print(f"sent_kb={sent >> 10} reply='{status}' closed={int(closed(c))}")
    else:
        sys.exit(f"unknown case {case}")


def closed(c):
    """True when the peer closed the connection (EOF or reset); reads nothing else."""
    try:
        p = select.poll()
        p.register(c, select.POLLIN | select.POLLHUP | select.POLLERR)
        if not p.poll(0):
            return False
        return c.recv(65536, socket.MSG_PEEK) == b""
    except (ConnectionResetError, OSError):
        return True


if __name__ == "__main__":
    main()
