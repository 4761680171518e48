#!/usr/bin/env python3
"""Calls through two proxy nodes at a steady rate, each ended through the other node.

Call i starts at i/RATE s and is sent to node A when i is even, B when odd (to the live one if
its node is down). INVITEs are retransmitted (500 ms doubling) for up to 8 s; a 2xx gets its
ACK along the route set; HOLD s after the answer the BYE (same route set) goes to the other
node, or to the live one, and is retransmitted the same way (each retransmission to a live
node). A node is down once DOWN_FILE holds "PORT EPOCH_MS" (written by the test when it kills
it): no call starts there after that.

Every 100 ms STATUS_FILE gets {"up": answered and not yet ended, "setting_up": INVITEs without
a final answer, "started"}. At the end one JSON object goes to stdout: counts, the setups that
failed (with whether they were in flight on a node at its kill), the BYEs that failed and the
ones a node answered just before it was killed.
Bounded: CALLS calls, and everything is given up 20 s after the last BYE is due.
Usage: clusterload.py SRC_PORT A_PORT B_PORT RATE CALLS HOLD_S DOWN_FILE STATUS_FILE TAG"""
import json
import os
import select
import socket
import sys
import time

from sipmsg import headers

src, pa, pb = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rate, calls, hold = float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
down_file, status_file, tag = sys.argv[7], sys.argv[8], sys.argv[9]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
s.bind(("127.0.0.1", src))
s.setblocking(False)
SDP = "v=0\r\no=u 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"
GIVE_UP = 8.0
LATE = 0.2


def down():
    """{port: kill time in epoch seconds} of the nodes the test has killed."""
    try:
        with open(down_file) as f:
            return {int(p): int(ms) / 1000 for p, ms in (line.split() for line in f if line.strip())}
    except (OSError, ValueError):
        return {}


def live(port, dead):
    return port if port not in dead else (pb if port == pa else pa)


class Call:
    def __init__(self, i, node, now):
        self.i, self.node, self.start = i, node, now
        self.cid = f"cl-{tag}-{i}-{os.getpid()}"
        self.state = "inviting"  # answered, byeing, done, failed
        self.next_tx, self.interval = now + 0.5, 0.5
        self.final_at = None
        self.code = None
        self.bye_code = None
        self.bye_at = None
        self.bye_done = None

    def common(self, to):
        return [f"From: <sip:load@example.net>;tag=f{self.i}", f"To: {to}", f"Call-ID: {self.cid}",
                "Max-Forwards: 70"]

    def invite(self):
        return "\r\n".join(
            [f"INVITE sip:svc{self.i}@127.0.0.1:{self.node} SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:{src};branch=z9hG4bK-{self.cid}-i;rport"]
            + self.common("<sip:svc@127.0.0.1>")
            + ["CSeq: 1 INVITE", f"Contact: <sip:load@127.0.0.1:{src}>", "Content-Type: application/sdp",
               f"Content-Length: {len(SDP)}", "", SDP])

    def in_dialog(self, method, seq, branch):
        return "\r\n".join(
            [f"{method} {self.contact} SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:{src};branch=z9hG4bK-{self.cid}-{branch};rport"]
            + [f"Route: {r}" for r in self.routes] + self.common(self.to)
            + [f"CSeq: {seq} {method}", "Content-Length: 0", "", ""])

    def failed_ack(self, to):
        return "\r\n".join(
            [f"ACK sip:svc{self.i}@127.0.0.1:{self.node} SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:{src};branch=z9hG4bK-{self.cid}-i;rport"]
            + self.common(to) + ["CSeq: 1 ACK", "Content-Length: 0", "", ""])


def send(msg, port):
    try:
        s.sendto(msg.encode(), ("127.0.0.1", port))
    except OSError:
        pass


t0 = time.time()
by_cid = {}
all_calls = []
next_status = t0
deadline = t0 + calls / rate + hold + GIVE_UP + 20
while time.time() < deadline:
    now = time.time()
    dead = down()
    while len(all_calls) < calls and now >= t0 + len(all_calls) / rate:
        i = len(all_calls)
        c = Call(i, live(pa if i % 2 == 0 else pb, dead), now)
        all_calls.append(c)
        by_cid[c.cid] = c
        send(c.invite(), c.node)
    for c in all_calls:
        if c.state == "inviting" and now >= c.next_tx:
            if now - c.start > GIVE_UP:
                c.state, c.code, c.final_at = "failed", "timeout", now
            else:
                send(c.invite(), c.node)
                c.interval = min(c.interval * 2, 4.0)
                c.next_tx = now + c.interval
        elif c.state == "answered" and now >= c.final_at + hold:
            c.state, c.bye_at = "byeing", now
            c.bye_to = live(pb if c.node == pa else pa, dead)
            c.next_tx, c.interval = now + 0.5, 0.5
            send(c.in_dialog("BYE", 2, "b"), c.bye_to)
        elif c.state == "byeing" and now >= c.next_tx:
            if now - c.bye_at > GIVE_UP:
                c.state, c.bye_code = "done", "timeout"
            else:
                c.bye_to = live(c.bye_to, dead)
                send(c.in_dialog("BYE", 2, "b"), c.bye_to)
                c.interval = min(c.interval * 2, 4.0)
                c.next_tx = now + c.interval
    if now >= next_status:
        up = sum(1 for c in all_calls if c.state == "answered")
        setting_up = sum(1 for c in all_calls if c.state == "inviting")
        with open(status_file + ".tmp", "w") as f:
            json.dump({"t": now, "up": up, "setting_up": setting_up, "started": len(all_calls)}, f)
        os.replace(status_file + ".tmp", status_file)
        next_status = now + 0.1
    if len(all_calls) == calls and all(c.state in ("done", "failed") for c in all_calls):
        break
    r, _, _ = select.select([s], [], [], 0.01)
    while r:
        try:
            data = s.recv(65535).decode(errors="replace")
        except BlockingIOError:
            break
        if not data.startswith("SIP/2.0 "):
            continue
        c = by_cid.get((headers(data, "call-id") or [""])[0])
        if c is None:
            continue
        code = int(data.split(" ")[1])
        method = (headers(data, "cseq") or ["0 X"])[0].split()[-1]
        if method == "INVITE":
            if code < 200:
                if c.state == "inviting":
                    c.next_tx = now + GIVE_UP  # a provisional stops the retransmissions
                continue
            to = headers(data, "to")[0]
            if code >= 300:
                send(c.failed_ack(to), c.node)
                if c.state == "inviting":
                    c.state, c.code, c.final_at = "failed", code, time.time()
                continue
            if c.state == "inviting":
                c.state, c.code, c.final_at = "answered", code, time.time()
                c.to = to
                c.routes = headers(data, "record-route")
                c.routes = [r for line in c.routes for r in line.split(",")]
                c.contact = headers(data, "contact")[0].split(">")[0].lstrip("<")
            if c.state in ("answered", "byeing", "done"):
                send(c.in_dialog("ACK", 1, "a"), c.node)
        elif method == "BYE" and c.state == "byeing" and code >= 200:
            c.state, c.bye_code, c.bye_done = "done", code, time.time()

kills = down()


def in_flight(c):
    """Its INVITE went to a node that was killed before the call's final answer."""
    k = kills.get(c.node)
    return k is not None and c.start <= k and (c.final_at is None or c.final_at >= k)


failed = [c for c in all_calls if c.state == "failed" or c.state == "inviting"]
bye_failed = [c for c in all_calls if c.bye_code not in (None, 200)]
out = {
    "started": len(all_calls),
    "answered": sum(1 for c in all_calls if c.code == 200),
    "bye_ok": sum(1 for c in all_calls if c.bye_code == 200),
    "not_ended": sum(1 for c in all_calls if c.code == 200 and c.bye_code is None),
    "setup_failed": len(failed),
    "setup_failed_in_flight": sum(1 for c in failed if in_flight(c)),
    "in_flight_at_kill": sum(1 for c in all_calls if kills and in_flight(c)),
    "started_after_kill": sum(1 for c in all_calls if kills and c.start > max(kills.values())),
    "answered_after_kill": sum(1 for c in all_calls if kills and c.start > max(kills.values()) and c.code == 200),
    "bye_failed": len(bye_failed),
    # BYEs a node answered in the last LATE s before it was killed: it may have died before
    # writing the call's end to Redis (a 50 ms write-behind), so the owner never hears of it
    "bye_answered_just_before_kill": sum(
        1 for c in all_calls if c.bye_done is not None and c.bye_to in kills
        and kills[c.bye_to] - LATE <= c.bye_done <= kills[c.bye_to]),
    "failures": [f"call {c.i} via {c.node}: {c.code}" for c in failed][:10]
    + [f"bye of call {c.i} (via {c.node}) to {c.bye_to}: {c.bye_code}" for c in bye_failed][:10],
}
print(json.dumps(out))
sys.exit(0)
