#!/usr/bin/env python3
"""SIP call load over UDP, TLS or WebSocket (the same harness for each, so the proxy's CPU
per call can be compared across transports; SIPp speaks neither TLS nor WebSocket here).

  loadgen.py calls TRANSPORT HOST PORT RATE SECONDS [CONNS]
      calls at RATE per second for SECONDS: INVITE (a small SDP), 200, ACK, BYE, 200,
      following the Record-Route set; over CONNS connections (TLS/WS; default 20).
      Prints "ok=N failed=M ... setup_ms_p50=X setup_ms_p99=Y" (INVITE sent -> 200 received;
      exit 0 when none failed).
  loadgen.py idle TRANSPORT HOST PORT N HOLD_SECONDS
      opens N connections (TLS, WS or WSS: handshakes done), prints "open=N rate=R/s" when
      they are all up, holds them HOLD_SECONDS, prints "held".
The callee is any UAS behind the proxy that echoes Record-Route (tests/e2e/scenarios/uas-rr.xml).
"""
import asyncio
import base64
import os
import re
import ssl
import struct
import sys
import time

MASK = b"\x11\x22\x33\x44"


def ws_frame(payload):
    n = len(payload)
    head = bytes([0x81])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + MASK + bytes(b ^ MASK[i & 3] for i, b in enumerate(payload))


_CTX = None


def tls_ctx():
    """One client context for every connection (making one reads the CA bundle: slow)."""
    global _CTX
    if _CTX is None:
        _CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _CTX.check_hostname = False
        _CTX.verify_mode = ssl.CERT_NONE
    return _CTX


async def open_stream(transport, host, port):
    tls = transport in ("tls", "wss")
    r, w = await asyncio.open_connection(host, port, ssl=tls_ctx() if tls else None)
    if transport in ("ws", "wss"):
        key = base64.b64encode(os.urandom(16)).decode()
        w.write((f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                 f"Sec-WebSocket-Protocol: sip\r\n\r\n").encode())
        head = await r.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(head[:40])
    return r, w


class Conn:
    """One connection (or the UDP socket) and the transactions waiting on it."""

    def __init__(self, transport):
        self.transport = transport
        self.waiting = {}  # (call-id, cseq method) -> future of the final response

    def deliver(self, msg):
        if not msg.startswith(b"SIP/2.0 "):
            return  # a request to us (none expected)
        code = int(msg[8:11])
        cid = re.search(rb"\r\n(?:Call-ID|i):\s*([^\r\n]+)", msg, re.I)
        cseq = re.search(rb"\r\nCSeq:\s*\d+\s+(\w+)", msg, re.I)
        if not cid or not cseq or code < 200:
            return
        f = self.waiting.pop((cid.group(1).strip(), cseq.group(1)), None)
        if f and not f.done():
            f.set_result(msg)

    async def reader(self, r):
        try:
            if self.transport in ("ws", "wss"):
                while True:
                    b0, b1 = await r.readexactly(2)
                    n = b1 & 0x7F
                    if n == 126:
                        n = struct.unpack(">H", await r.readexactly(2))[0]
                    elif n == 127:
                        n = struct.unpack(">Q", await r.readexactly(8))[0]
                    p = await r.readexactly(n)
                    if b0 & 0x0F in (1, 2):
                        self.deliver(p)
            else:
                while True:
                    head = await r.readuntil(b"\r\n\r\n")
                    m = re.search(rb"\r\n(?:Content-Length|l):\s*(\d+)", head, re.I)
                    body = await r.readexactly(int(m.group(1))) if m else b""
                    self.deliver(head + body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass


class Udp(asyncio.DatagramProtocol):
    def __init__(self, conn):
        self.conn = conn

    def datagram_received(self, data, addr):
        self.conn.deliver(data)


SDP = "v=0\r\no=lg 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"


SETUP = []  # INVITE sent -> 200 received, seconds, per answered call


async def one_call(conn, send, local, n, host, port, timeout=5.0):
    tp = {"udp": "UDP", "tls": "TLS", "ws": "WS", "wss": "WSS"}[conn.transport]
    cid = f"lg{os.getpid()}-{n}-{time.time_ns()}"
    tag = f"t{n}"
    via = lambda b: f"Via: SIP/2.0/{tp} {local};branch=z9hG4bK{b};rport"
    base = f"From: <sip:lg@127.0.0.1>;tag={tag}\r\nCall-ID: {cid}\r\nMax-Forwards: 70\r\n"
    loop = asyncio.get_running_loop()

    async def txn(msg, method):
        f = loop.create_future()
        conn.waiting[(cid.encode(), method)] = f
        send(msg.encode())
        try:
            return await asyncio.wait_for(f, timeout)
        finally:
            conn.waiting.pop((cid.encode(), method), None)

    ruri = f"sip:{5550000 + n % 1000}@{host}:{port}"
    inv = (f"INVITE {ruri} SIP/2.0\r\n{via(f'i{n}')}\r\n{base}To: <{ruri}>\r\nCSeq: 1 INVITE\r\n"
           f"Contact: <sip:lg@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n{SDP}")
    t_inv = time.monotonic()
    r = await txn(inv, b"INVITE")
    if not r.startswith(b"SIP/2.0 200"):
        return False
    SETUP.append(time.monotonic() - t_inv)
    text = r.decode(errors="replace")
    to = re.search(r"\r\n(?:To|t):\s*([^\r\n]+)", text, re.I).group(1)
    rr = []
    for line in re.findall(r"\r\nRecord-Route:\s*([^\r\n]+)", text, re.I):
        rr.extend(x.strip() for x in line.split(","))
    contact = re.search(r"\r\n(?:Contact|m):\s*<([^>]+)>", text, re.I).group(1)
    routes = "".join(f"Route: {x}\r\n" for x in reversed(rr))  # the callee's order reversed
    ack = (f"ACK {contact} SIP/2.0\r\n{via(f'a{n}')}\r\n{routes}{base}To: {to}\r\nCSeq: 1 ACK\r\n"
           f"Content-Length: 0\r\n\r\n")
    send(ack.encode())
    bye = (f"BYE {contact} SIP/2.0\r\n{via(f'b{n}')}\r\n{routes}{base}To: {to}\r\nCSeq: 2 BYE\r\n"
           f"Content-Length: 0\r\n\r\n")
    r = await txn(bye, b"BYE")
    return r.startswith(b"SIP/2.0 200")


async def calls(transport, host, port, rate, secs, nconns):
    loop = asyncio.get_running_loop()
    senders = []
    if transport == "udp":
        conn = Conn("udp")
        tr, _ = await loop.create_datagram_endpoint(lambda: Udp(conn), local_addr=("127.0.0.1", 0),
                                                    remote_addr=(host, port))
        local = "%s:%d" % tr.get_extra_info("sockname")[:2]
        senders.append((conn, tr.sendto, local))
    else:
        for _ in range(nconns):
            conn = Conn(transport)
            r, w = await open_stream(transport, host, port)
            asyncio.create_task(conn.reader(r))
            ws = transport in ("ws", "wss")
            local = "%s:%d" % w.get_extra_info("sockname")[:2]
            senders.append((conn, (lambda w, ws: lambda m: w.write(ws_frame(m) if ws else m))(w, ws), local))
    total = int(rate * secs)
    tasks = []
    t0 = time.monotonic()
    for n in range(total):
        delay = t0 + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        conn, send, local = senders[n % len(senders)]
        tasks.append(asyncio.create_task(one_call(conn, send, local, n, host, port)))
    res = await asyncio.gather(*tasks, return_exceptions=True)
    ok = sum(1 for x in res if x is True)
    took = time.monotonic() - t0
    st = sorted(SETUP)
    pct = lambda q: st[min(len(st) - 1, int(len(st) * q))] * 1000 if st else 0.0
    print(f"ok={ok} failed={total - ok} seconds={took:.1f} setup_ms_p50={pct(0.5):.3f} setup_ms_p99={pct(0.99):.3f}")
    return ok == total


async def idle(transport, host, port, n, hold):
    t0 = time.monotonic()
    sem = asyncio.Semaphore(200)
    conns = []

    async def one():
        async with sem:
            conns.append(await open_stream(transport, host, port))
    res = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    errs = [x for x in res if isinstance(x, Exception)]
    took = time.monotonic() - t0
    print(f"open={len(conns)} failed={len(errs)} rate={len(conns) / took:.0f}/s", flush=True)
    await asyncio.sleep(hold)
    print("held", flush=True)
    for _, w in conns:
        w.close()
    return not errs


def main():
    cmd = sys.argv[1]
    if cmd == "calls":
        tp, host, port, rate, secs = sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
        nconns = int(sys.argv[7]) if len(sys.argv) > 7 else 20
        ok = asyncio.run(calls(tp, host, port, rate, secs, nconns))
    elif cmd == "idle":
        tp, host, port, n, hold = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
        ok = asyncio.run(idle(tp, host, port, n, hold))
    else:
        print(__doc__)
        sys.exit(2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
