#!/usr/bin/env python3
"""Stream-transport probes for the TLS/WebSocket suite (tests/e2e/streams.sh). Each command
prints one line `key=value ...` and exits 0 when the proxy behaved as expected.

  streamcli.py ws-options HOST PORT [tls]        a WebSocket (or WSS) OPTIONS gets an answer
  streamcli.py ws-bad-handshake HOST PORT        a malformed upgrade: an HTTP 4xx, then closed
  streamcli.py ws-subprotocol HOST PORT          no 'sip' subprotocol: 400, closed
  streamcli.py ws-origin HOST PORT ORIGIN        a disallowed Origin: 403, closed
  streamcli.py ws-plain-get HOST PORT            a plain GET: a short JSON page, closed
  streamcli.py ws-huge HOST PORT                 a 10 MB frame: close 1009 before 64 kB sent
  streamcli.py ws-ping-flood HOST PORT [tls]     pings never read: closed by the send queue cap
  streamcli.py tls-garbage HOST PORT             a TLS port spoken to in plain text: closed
  streamcli.py stall HOST PORT SECONDS [tls]     a handshake that never finishes: closed in time
  streamcli.py many HOST PORT N                  N connections from one address: the excess refused
  streamcli.py tls-options HOST PORT CA [CERT KEY]   TLS with the server's certificate checked
                                                 (and a client certificate): OPTIONS gets 200
  streamcli.py tls-register HOST PORT CA USER     a REGISTER without credentials gets 401
  streamcli.py tls-uas HOST PORT CERT KEY        a TLS server answering every request 486
  streamcli.py tls-peer HOST PORT [CERT KEY]     the fingerprint of the server's certificate
  streamcli.py ws-register HOST PORT USER PASS [tls]   registers over WS(S) with digest, then holds
                                                 the connection: prints 'registered' and waits
                                                 for SIGTERM or stdin EOF
WebSocket commands send the Origin in $WS_ORIGIN (none when unset).
"""
import base64
import hashlib
import os
import socket
import ssl
import struct
import sys
import time

MASK = b"\x5a\x17\xc3\x99"


def tls_client():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def connect(host, port, tls=False, timeout=5.0):
    s = socket.create_connection((host, port), timeout=timeout)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s)
    s.settimeout(timeout)
    return s


def upgrade_request(host, port, protocol="sip", origin=None, extra=""):
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET / HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    if origin:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode(), key


def read_http(s):
    """The HTTP answer's head (status line first), or '' when the connection closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            b = s.recv(4096)
        except (socket.timeout, ConnectionError, ssl.SSLError):
            break
        if not b:
            break
        data += b
    return data.decode(errors="replace")


def closed(s, wait=5.0):
    """True when the peer closes within `wait` seconds (EOF or reset)."""
    s.settimeout(wait)
    end = time.time() + wait
    try:
        while time.time() < end:
            b = s.recv(65536)
            if not b:
                return True
    except (ConnectionError, ssl.SSLError, OSError) as e:
        return not isinstance(e, socket.timeout)
    return False


def frame(payload, opcode=1):
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + MASK + bytes(b ^ MASK[i & 3] for i, b in enumerate(payload))


def read_frame(s):
    """(opcode, payload) of the next server frame."""
    def exact(n):
        buf = b""
        while len(buf) < n:
            b = s.recv(n - len(buf))
            if not b:
                raise ConnectionError("closed")
            buf += b
        return buf
    b0, b1 = exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", exact(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", exact(8))[0]
    return b0 & 0x0F, exact(n)


def ws_open(host, port, tls=False, **kw):
    """An upgraded connection; the Origin sent is $WS_ORIGIN when set."""
    kw.setdefault("origin", os.environ.get("WS_ORIGIN"))
    s = connect(host, port, tls)
    req, _ = upgrade_request(host, port, **kw)
    s.sendall(req)
    head = read_http(s)
    if " 101 " not in head.split("\r\n", 1)[0]:
        raise RuntimeError("no upgrade: " + head.split("\r\n", 1)[0])
    return s


def sip_request(method, ruri, transport, extra=(), call_id=None, cseq=1, body=""):
    call_id = call_id or f"sc-{time.time_ns()}"
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport} df7jal23ls0d.invalid;branch=z9hG4bK{os.urandom(6).hex()};rport",
        "Max-Forwards: 70",
        f"From: <sip:probe@example.test>;tag={os.urandom(4).hex()}",
        f"To: <{ruri}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        *extra,
        f"Content-Length: {len(body.encode())}",
        "",
        body,
    ]
    return "\r\n".join(lines).encode()


def status(msg):
    first = msg.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = first.split(" ")
    return int(parts[1]) if first.startswith("SIP/2.0 ") and len(parts) > 1 else 0


def ws_options(host, port, tls):
    s = ws_open(host, port, tls)
    s.sendall(frame(sip_request("OPTIONS", f"sip:{host}:{port}", "WSS" if tls else "WS")))
    while True:
        op, p = read_frame(s)
        if op in (1, 2):
            print(f"status={status(p)}")
            return status(p) == 200


def digest(user, pw, realm, nonce, method, uri, qop):
    ha1 = hashlib.md5(f"{user}:{realm}:{pw}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    if qop:
        nc, cn = "00000001", os.urandom(4).hex()
        r = hashlib.md5(f"{ha1}:{nonce}:{nc}:{cn}:auth:{ha2}".encode()).hexdigest()
        return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
                f'response="{r}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cn}"')
    r = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{r}", algorithm=MD5')


def param(h, name):
    import re
    m = re.search(name + r'="?([^",]*)"?', h)
    return m.group(1) if m else ""


def ws_register(host, port, user, pw, tls):
    tp = "WSS" if tls else "WS"
    s = ws_open(host, port, tls)
    ruri = f"sip:{host}:{port}"
    call_id = f"reg-{time.time_ns()}"
    contact = f"Contact: <sip:{user}@df7jal23ls0d.invalid;transport={tp.lower()}>;expires=300"
    to = f"To: <sip:{user}@{host}>"
    def reg(cseq, auth=()):
        m = sip_request("REGISTER", ruri, tp, extra=[contact, *auth], call_id=call_id, cseq=cseq)
        return m.replace(f"To: <{ruri}>".encode(), to.encode()).replace(
            b"From: <sip:probe@example.test>", f"From: <sip:{user}@{host}>".encode())
    s.sendall(frame(reg(1)))
    _, p = read_frame(s)
    if status(p) == 401:
        h = [l for l in p.decode().split("\r\n") if l.lower().startswith("www-authenticate:")][0]
        a = digest(user, pw, param(h, "realm"), param(h, "nonce"), "REGISTER", ruri, "qop" in h)
        s.sendall(frame(reg(2, [f"Authorization: {a}"])))
        _, p = read_frame(s)
    print(f"status={status(p)}", flush=True)
    if status(p) != 200:
        return False
    print("registered", flush=True)
    s.settimeout(None)
    # hold the connection until told to stop (stdin closes); answer nothing
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    return True


def main():
    cmd, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rest = sys.argv[4:]
    tls = "tls" in rest
    ok = False
    if cmd == "ws-options":
        ok = ws_options(host, port, tls)
    elif cmd in ("ws-bad-handshake", "ws-subprotocol", "ws-origin", "ws-plain-get"):
        s = connect(host, port, tls)
        if cmd == "ws-bad-handshake":
            s.sendall(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n")
            want = "400"
        elif cmd == "ws-subprotocol":
            s.sendall(upgrade_request(host, port, protocol="chat")[0])
            want = "400"
        elif cmd == "ws-origin":
            s.sendall(upgrade_request(host, port, origin=rest[0])[0])
            want = "403"
        else:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            want = "200"
        head = read_http(s)
        line = head.split("\r\n", 1)[0]
        c = closed(s)
        print(f"answer={line!r} closed={int(c)}")
        ok = f" {want} " in line + " " and c
    elif cmd == "ws-huge":
        s = ws_open(host, port, tls)
        # the header of a 10 MB binary frame, then payload until the proxy closes
        s.sendall(bytes([0x82, 0x80 | 127]) + struct.pack(">Q", 10 << 20) + MASK)
        sent, code = 0, None
        try:
            while sent < (10 << 20):
                s.sendall(b"\0" * 16384)
                sent += 16384
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        try:
            op, p = read_frame(s)
            if op == 8 and len(p) >= 2:
                code = struct.unpack(">H", p[:2])[0]
        except (ConnectionError, OSError):
            pass
        c = closed(s)
        print(f"close_code={code} sent={sent} closed={int(c)}")
        ok = c and sent < (10 << 20) and code in (1009, None)
    elif cmd == "ws-ping-flood":
        # pings as fast as possible, never reading a pong: the proxy must close the
        # connection on its send queue's cap (before its 10 s write timeout)
        s = ws_open(host, port, tls)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(None)  # a partial send would cut a frame: block, in a thread
        import threading
        chunk = (bytes([0x89, 0x80]) + MASK) * 10_000
        state = {"sent": 0, "closed": False, "at": None}
        t0 = time.time()

        def flood():
            try:
                while time.time() - t0 < 8:
                    s.sendall(chunk)
                    state["sent"] += len(chunk)
            except (ConnectionError, ssl.SSLError, OSError):
                state["closed"], state["at"] = True, time.time()
        th = threading.Thread(target=flood, daemon=True)
        th.start()
        th.join(9)
        c = state["closed"]
        took = (state["at"] or time.time()) - t0
        sent = state["sent"]
        print(f"pings_sent={sent // 6} closed={int(c)} after_s={took:.1f}")
        ok = c and took < 8
    elif cmd == "tls-garbage":
        s = connect(host, port)
        s.sendall(b"OPTIONS sip:x SIP/2.0\r\n\r\n" + os.urandom(512))
        c = closed(s)
        print(f"closed={int(c)}")
        ok = c
    elif cmd == "stall":
        wait = float(rest[0])
        s = socket.create_connection((host, port), timeout=5)
        t0 = time.time()
        s.sendall(b"\x16\x03\x01" if tls else b"GET / HTTP/1.1\r\n")  # and never more
        c = closed(s, wait)
        took = time.time() - t0
        print(f"closed={int(c)} after_s={took:.1f}")
        ok = c
    elif cmd == "many":
        n = int(rest[0])
        socks, refused, local = [], 0, 0
        for _ in range(n):
            try:
                socks.append(socket.create_connection((host, port), timeout=2))
            except OSError as e:
                if e.errno in (23, 24):  # ENFILE/EMFILE: our own limit, not the proxy's answer
                    local += 1
                    break
                refused += 1
        time.sleep(1.0)
        # the ones the proxy closed at once read EOF
        shut = 0
        for s in socks:
            s.setblocking(False)
            try:
                if s.recv(1) == b"":
                    shut += 1
            except BlockingIOError:
                pass
            except OSError:
                shut += 1
        open_ = len(socks) - shut
        print(f"open={open_} closed_by_proxy={shut} connect_failed={refused} local_fd_limit_hit={local}")
        for s in socks:
            s.close()
        ok = shut + refused > 0 and local == 0
    elif cmd == "tls-peer":
        # the SHA-256 of the certificate the server presents now
        raw = socket.create_connection((host, port), timeout=5)
        ctx = tls_client()
        if len(rest) > 1:
            ctx.load_cert_chain(rest[0], rest[1])
        s = ctx.wrap_socket(raw)
        der = s.getpeercert(binary_form=True)
        print(f"cert={hashlib.sha256(der).hexdigest()[:16]}")
        ok = True
    elif cmd == "tls-options":
        ctx = ssl.create_default_context(cafile=rest[0])
        if len(rest) > 2:
            ctx.load_cert_chain(rest[1], rest[2])  # a client certificate
        raw = socket.create_connection((host, port), timeout=5)
        try:
            s = ctx.wrap_socket(raw, server_hostname=host)
            s.settimeout(5)
            s.sendall(sip_request("OPTIONS", f"sip:{host}:{port};transport=tls", "TLS"))
            data = s.recv(65536)
        except (ssl.SSLError, ConnectionError, socket.timeout) as e:
            print(f"status=0 refused={type(e).__name__}")
            sys.exit(1)
        print(f"status={status(data)} version={s.version()}")
        ok = status(data) == 200
    elif cmd == "tls-register":
        # a REGISTER without credentials over TLS: the registrar must challenge it
        ctx = ssl.create_default_context(cafile=rest[0])
        s = ctx.wrap_socket(socket.create_connection((host, port), timeout=5), server_hostname=host)
        s.settimeout(5)
        user = rest[1]
        m = sip_request("REGISTER", f"sip:{host}", "TLS", extra=[f"Contact: <sip:{user}@{host};transport=tls>"])
        m = m.replace(f"To: <sip:{host}>".encode(), f"To: <sip:{user}@{host}>".encode())
        s.sendall(m)
        data = s.recv(65536)
        print(f"status={status(data)}")
        ok = status(data) == 401
    elif cmd == "tls-uas":
        # a TLS "media server": answers every request with 486 until killed; prints each
        # handshake's outcome (the proxy is the client and must accept our certificate)
        srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        srv.load_cert_chain(rest[0], rest[1])
        ls = socket.create_server((host, port))
        while True:
            c, _ = ls.accept()
            try:
                t = srv.wrap_socket(c, server_side=True)
            except (ssl.SSLError, OSError) as e:
                print(f"handshake failed {type(e).__name__}", flush=True)
                continue
            print("handshake ok", flush=True)
            t.settimeout(5)
            try:
                req = t.recv(65536).decode(errors="replace")
                head = req.split("\r\n\r\n", 1)[0].split("\r\n")
                keep = [h for h in head[1:] if h.split(":", 1)[0].strip().lower() in ("via", "from", "to", "call-id", "cseq")]
                t.sendall(("SIP/2.0 486 Busy Here\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n").encode())
                t.recv(65536)  # the ACK
            except (OSError, ssl.SSLError):
                pass
    elif cmd == "ws-register":
        ok = ws_register(host, port, rest[0], rest[1], tls)
    else:
        print(__doc__)
        sys.exit(2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
