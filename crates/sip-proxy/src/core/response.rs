//! The response path: matching a branch, hop-by-hop ACK, failover, best-response selection
//! and relaying upstream (§16.7), abandoned branches, orphaned 2xx.

use super::*;

impl Proxy {
    pub(super) fn on_response(
        &self,
        now: Instant,
        src: Source,
        msg: Message,
        out: &mut Vec<Transmit>,
    ) {
        Stats::inc(&self.stats.rcv_replies);
        let code = msg.status().unwrap_or(0);
        if self.to_peer(&msg, out) {
            return;
        }
        let branch = msg.branch().unwrap_or("");
        let (id, idx) = match self.owner_of(branch) {
            Owner::Ours(Origin::Relay { ctx, branch }) => (ctx, branch),
            Owner::Ours(Origin::Probe(id)) => {
                if code >= 200 {
                    self.router.probe_result(now, id, Some(code));
                }
                return;
            }
            Owner::Ours(Origin::KeepAlive(id)) => {
                // any answer, even 404 or 405, shows the binding is alive
                if let Some(reg) = &self.registrar {
                    reg.on_pong(id);
                }
                return;
            }
            Owner::DialogBye => return, // the answer to a BYE the proxy sent to end a dialog
            Owner::Forged => return self.forged_response(now, &src, &msg),
            Owner::Foreign => {
                Stats::inc(&self.stats.dropped);
                return;
            }
        };
        let is_invite = msg.cseq().is_ok_and(|c| c.method == "INVITE");
        let si = self.shard_of_id(id);
        let mut g = self.lock(si);
        let shard = &mut *g;
        let Some(ctx) = shard.ctxs.get_mut(&id) else {
            drop(g);
            if is_invite && (200..300).contains(&code) {
                self.forward_response_stateless(&msg, out); // late 2xx retransmission (§16.7 step 5)
            } else {
                Stats::inc(&self.stats.dropped);
            }
            return;
        };
        let idx = idx as usize;
        let Some(b) = ctx.branches.get_mut(idx) else {
            return;
        };
        if src.addr != b.target.addr && src.flow.is_none_or(|f| Some(f) != b.target.flow) {
            // a reply may come from another address (a multi-homed peer, RFC 3261 §18.2.1
            // lets it); the MAC says it answers our request, the log says who sent it
            Stats::inc(&self.stats.foreign_sources);
            if let Some(skipped) = self.log_limit.allow(now, Kind::ForeignSource) {
                tracing::info!(source = %src.addr, destination = %b.target.addr, code, call_id = msg.call_id(), skipped, "reply from another address than its request went to");
            }
        }
        if msg.cseq().is_ok_and(|c| c.method == "CANCEL") {
            if let Some(c) = &mut b.cancel {
                c.on_response(now, code);
            }
            return;
        }
        let req = b.request.clone();
        if ctx.invite && msg.cseq().is_ok_and(|c| c.method == "BYE") {
            if let Some(t) = &mut b.bye {
                t.on_response(now, code);
            }
            return self.settle(shard, id);
        }
        if ctx.invite && b.done && b.txn.is_terminated() {
            self.on_abandoned_branch_response(now, ctx, idx, code, &msg, out);
            return self.settle(shard, id);
        }
        let action = match &mut b.txn {
            ClientTxn::Invite(t) => t.on_response(now, code, || match Message::parse_raw(req) {
                Ok(inv) => make_ack(&inv, &msg),
                Err(_) => Bytes::new(),
            }),
            ClientTxn::NonInvite(t) => t.on_response(now, code),
        };
        self.flush_branch(ctx, idx, out);
        if action == ResponseAction::Absorb {
            return self.settle(shard, id);
        }
        let b = &mut ctx.branches[idx];
        if !b.provisional {
            // the destination is alive unless it answered with a failover code
            let ok = !self.cfg.failover_codes.contains(&code);
            self.router.on_branch_result(&b.dest, ok);
            if let Some(n) = &self.numbers {
                n.on_branch_result(&b.dest, ok);
            }
        }
        match code {
            100..=199 => {
                b.provisional = true;
                if b.cancel_pending {
                    self.cancel_branch(now, ctx, idx, out);
                }
                if code > 100 && !ctx.final_sent {
                    self.track_dialog(now, ctx, idx, &msg, false);
                    if let Some(data) = self
                        .media_reply(now, ctx, idx, code, &msg, &src, false)
                        .upstream(&msg)
                    {
                        self.send_upstream(now, ctx, code, data, out);
                    }
                }
            }
            200..=299 => {
                b.provisional = true;
                b.done = true;
                let first = !ctx.final_sent;
                ctx.final_sent = true;
                let step = self.media_reply(now, ctx, idx, code, &msg, &src, first);
                let b = &ctx.branches[idx];
                if first && ctx.invite && ctx.fast_failover {
                    self.router.on_call_answered(msg.call_id(), &b.dest);
                    if step.goes_now() {
                        // a reply waiting for the relay is tracked once it goes upstream
                        self.track_dialog(now, ctx, idx, &msg, true);
                    }
                }
                if let (Some(flow), Some(reg)) = (ctx.plan.in_flow, &self.registrar) {
                    // a REGISTER forwarded to a media server: the client's connection lives
                    // as long as the registration it granted
                    if msg.cseq().is_ok_and(|c| c.method == "REGISTER") {
                        if let Some(secs) = granted_expires(&msg) {
                            reg.hold_flow(flow, now + std::time::Duration::from_secs(secs));
                        }
                    }
                }
                if let Some(data) = step.upstream(&msg) {
                    self.send_upstream(now, ctx, code, data, out);
                }
                if first {
                    for i in 0..ctx.branches.len() {
                        if i != idx && !ctx.branches[i].done {
                            self.cancel_branch(now, ctx, i, out);
                        }
                    }
                }
            }
            _ => {
                b.done = true;
                if ctx.invite && ctx.fast_failover {
                    self.router.on_attempt_failed(msg.call_id(), &b.dest);
                }
                let rank = |c: u16| if c >= 600 { 0 } else { c / 100 };
                if ctx
                    .best
                    .as_ref()
                    .is_none_or(|(bc, _)| rank(code) < rank(*bc))
                {
                    ctx.best = Some((code, strip_top_via(&msg)));
                }
                self.after_branch_final(now, ctx, code, out);
            }
        }
        self.settle(shard, id);
    }

    /// A response whose branch looks like ours but fails the MAC check: dropped, counted,
    /// logged at most once a second.
    fn forged_response(&self, now: Instant, src: &Source, msg: &Message) {
        Stats::inc(&self.stats.forged_responses);
        if let Some(skipped) = self.log_limit.allow(now, Kind::ForgedResponse) {
            tracing::warn!(source = %src.addr, branch = msg.branch().unwrap_or(""), code = msg.status().unwrap_or(0), skipped, "response with a branch the proxy did not issue: dropped");
        }
    }

    /// A response on an INVITE branch the proxy gave up on (silence) or whose final is over.
    /// A 2xx is relayed when nothing final went upstream yet (§16.7 step 5) and then wins; a
    /// 2xx after another 2xx was relayed is an orphan the proxy ends itself (ACK, then BYE),
    /// so the caller never holds two dialogs and the media server frees the channel. A
    /// provisional gets the branch cancelled; a failure gets its hop-by-hop ACK.
    pub(super) fn on_abandoned_branch_response(
        &self,
        now: Instant,
        ctx: &mut Ctx,
        idx: usize,
        code: u16,
        msg: &Message,
        out: &mut Vec<Transmit>,
    ) {
        match code {
            100..=199 => {
                let b = &mut ctx.branches[idx];
                b.provisional = true;
                if b.cancel.is_none() {
                    b.done = false;
                    self.cancel_branch(now, ctx, idx, out);
                    ctx.branches[idx].done = true;
                }
            }
            200..=299 if !ctx.final_sent => {
                tracing::info!(call_id = ctx.call_id(), destination = %ctx.branches[idx].dest.uri, "late 2xx on an abandoned branch relayed");
                ctx.final_sent = true;
                // its SDP goes through the relay like any answer
                let t = ctx.branches[idx].target;
                let src = Source {
                    transport: t.transport,
                    addr: t.addr,
                    flow: t.flow,
                };
                let step = self.media_reply(now, ctx, idx, code, msg, &src, true);
                if ctx.fast_failover {
                    self.router
                        .on_call_answered(msg.call_id(), &ctx.branches[idx].dest);
                    if step.goes_now() {
                        self.track_dialog(now, ctx, idx, msg, true);
                    }
                }
                if let Some(data) = step.upstream(msg) {
                    self.send_upstream(now, ctx, code, data, out);
                }
                for i in 0..ctx.branches.len() {
                    if i != idx {
                        self.cancel_branch(now, ctx, i, out);
                    }
                }
            }
            200..=299 => {
                if ctx.branches[idx].bye.is_none() {
                    tracing::info!(call_id = msg.call_id(), destination = %ctx.branches[idx].dest.uri, "orphaned 2xx: ACK and BYE sent by the proxy");
                }
                self.end_answered_branch(now, ctx, idx, msg, out);
            }
            _ => {
                let b = &ctx.branches[idx];
                if let Ok(inv) = Message::parse_raw(b.request.clone()) {
                    out.push(Transmit {
                        target: b.target,
                        data: make_ack(&inv, msg),
                        origin: None,
                        tls_name: None,
                    });
                }
            }
        }
    }

    /// A branch ended without a response we relay yet: fail over or finish.
    pub(super) fn branch_failed(
        &self,
        now: Instant,
        ctx: &mut Ctx,
        i: usize,
        code: u16,
        reason: &'static str,
        out: &mut Vec<Transmit>,
    ) {
        let b = &mut ctx.branches[i];
        b.done = true;
        b.txn.terminate();
        if ctx.best.is_none() {
            ctx.fallback = (code, reason.into());
        }
        let dest = ctx.branches[i].dest.clone();
        self.router.on_branch_result(&dest, false);
        if let Some(n) = &self.numbers {
            n.on_branch_result(&dest, false);
        }
        if ctx.invite && ctx.fast_failover {
            let call_id = ctx.call_id().to_string();
            self.router.on_attempt_failed(&call_id, &dest);
        }
        self.after_branch_final(now, ctx, code, out);
    }

    pub(super) fn after_branch_final(
        &self,
        now: Instant,
        ctx: &mut Ctx,
        code: u16,
        out: &mut Vec<Transmit>,
    ) {
        // contacts of a user fork serially on any failure but 6xx; media servers on the
        // configured failover codes
        let failover_code = if ctx.plan.ruri_from_dest {
            (300..600).contains(&code)
        } else {
            self.cfg.failover_codes.contains(&code)
        };
        if failover_code
            && !ctx.plan.ruri_from_dest
            && ctx.fast_failover
            && !ctx.final_sent
            && !ctx.cancelled
            && ctx.next_candidate >= ctx.candidates.len()
            && ctx.all_branches_done()
        {
            // every candidate failed: say so, naming the set, instead of relaying one failure
            ctx.best = None;
            ctx.fallback = (
                503,
                format!(
                    "Service Unavailable (every destination of {} failed)",
                    self.router.describe()
                )
                .into(),
            );
        }
        if !ctx.final_sent
            && !ctx.cancelled
            && failover_code
            && ctx.next_candidate < ctx.candidates.len()
        {
            Stats::inc(&self.stats.failovers);
            tracing::info!(
                call_id = ctx.call_id(),
                code,
                "failover to the next destination"
            );
            ctx.best = None;
            if self.start_branch(now, ctx, out) {
                return;
            }
        }
        self.finalize(now, ctx, out);
    }

    /// Sends the best final response once every branch is done (§16.7 step 6).
    pub(super) fn finalize(&self, now: Instant, ctx: &mut Ctx, out: &mut Vec<Transmit>) {
        if ctx.final_sent || !ctx.all_branches_done() {
            return;
        }
        ctx.final_sent = true;
        let (code, data) = match ctx.best.take() {
            Some((503, _)) => (
                500,
                self.local_reply(ctx, 500, "Server Internal Error (503 from downstream)"),
            ),
            Some(best) => best,
            None if ctx.cancelled => (487, self.local_reply(ctx, 487, "Request Terminated")),
            None => {
                let (c, r) = ctx.fallback.clone();
                let data = self.local_reply(ctx, c, &r);
                (c, data)
            }
        };
        if let (Some(d), Some(req)) = (&self.dialogs, &ctx.req) {
            if ctx.invite && ctx.fast_failover {
                d.on_failure(req.call_id(), req.from_tag().unwrap_or(""));
            }
        }
        if let Some(req) = ctx.req.as_ref().filter(|_| ctx.invite && ctx.fast_failover) {
            // a call counted where it came from (lb_count_call) is over
            self.router.on_call_ended(req.call_id());
            if ctx.media.as_ref().is_some_and(|m| m.offered) {
                self.media_delete(req.call_id());
            }
        }
        if let (Some(c), Some(req)) = (&self.cdrs, &ctx.req) {
            if ctx.invite && ctx.fast_failover {
                let reason = std::str::from_utf8(&data[..data.len().min(200)])
                    .ok()
                    .and_then(|s| s.lines().next())
                    .and_then(|l| l.splitn(3, ' ').nth(2))
                    .unwrap_or("");
                let end = self.dialogs.as_ref().map_or(0, |d| d.unix(now));
                let to_tag = Message::parse_raw(data.clone()).ok();
                c.push(crate::cdr::CallRecord::failed(
                    req.call_id(),
                    req.from_tag().unwrap_or(""),
                    to_tag.as_ref().and_then(|m| m.to_tag()).unwrap_or(""),
                    req.get(HeaderName::From).unwrap_or(""),
                    req.get(HeaderName::To).unwrap_or(""),
                    req.uri_str(),
                    Some(ctx.resp_target.addr),
                    ctx.branches.last().map(|b| b.dest.uri.clone()),
                    end,
                    code,
                    reason,
                ));
            }
        }
        self.send_upstream(now, ctx, code, data, out);
    }

    /// An initial INVITE got a provisional with a to-tag (early dialog) or a 2xx
    /// (confirmed): the dialog table learns both legs.
    pub(super) fn track_dialog(
        &self,
        now: Instant,
        ctx: &Ctx,
        idx: usize,
        msg: &Message,
        confirmed: bool,
    ) {
        let Some(d) = &self.dialogs else {
            return;
        };
        let Some(req) = ctx.req.as_ref().filter(|_| ctx.invite && ctx.fast_failover) else {
            return;
        };
        let (Some(from_tag), Some(to_tag)) = (req.from_tag(), msg.to_tag()) else {
            return;
        };
        fn contact_of(m: &Message) -> Option<&str> {
            m.get(HeaderName::Contact)
                .and_then(|c| split_commas(c).next())
                .and_then(|v| NameAddr::parse(v, "Contact").ok())
                .map(|n| n.uri.raw)
        }
        let b = &ctx.branches[idx];
        // the parsing is done only when needed: the caller's side for a new dialog, the
        // callee's when its headers differ from the last answer's (a 200 after a 180
        // usually repeats them)
        let routes = std::cell::OnceCell::new();
        let routes = || routes.get_or_init(|| self.route_sets(msg));
        let caller = || Leg {
            party: req.get(HeaderName::From).unwrap_or(""),
            contact: contact_of(req)
                .or_else(|| req.from().ok().map(|f| f.uri.raw))
                .unwrap_or_default(),
            route: &routes().0,
            target: ctx.resp_target,
            cseq: req.cseq().map(|c| c.seq).unwrap_or(1),
        };
        let callee = || Leg {
            party: msg.get(HeaderName::To).unwrap_or(""),
            contact: contact_of(msg).unwrap_or(&b.dest.uri),
            route: &routes().1,
            target: b.target,
            cseq: 0,
        };
        let callee_print = d.fingerprint(
            msg.get(HeaderName::To),
            msg.all(HeaderName::Contact)
                .chain(msg.all(HeaderName::RecordRoute)),
            b.target,
        );
        let se = confirmed
            .then(|| {
                msg.get(HeaderName::SessionExpires)
                    .or_else(|| req.get(HeaderName::SessionExpires))
                    .and_then(crate::dialog::parse_session_expires)
            })
            .flatten();
        d.on_answer(
            now,
            d.unix(now),
            confirmed,
            req.call_id(),
            from_tag,
            to_tag,
            caller,
            callee,
            callee_print,
            // a media server (dispatcher or balancer node) is named: the CDR's node, and
            // where a restart counts the call again
            (b.dest.node.is_some() || self.router.is_destination(b.dest.addr))
                .then(|| b.dest.uri.clone()),
            se,
            req.uri_str(),
        );
    }

    /// The route sets from a dialog-creating response's Record-Route (§12.1): the values
    /// above ours were added by proxies toward the callee (a request to the callee visits
    /// them nearest first, so reversed), the values below ours by proxies toward the caller
    /// (in order). Empty strings, without allocating, when we are the only proxy.
    fn route_sets(&self, msg: &Message) -> (String, String) {
        // the usual case, our own plain Record-Route alone, needs no URI parsing
        if msg
            .values(HeaderName::RecordRoute)
            .all(|v| self.is_plain_own_rr(v))
        {
            return (String::new(), String::new());
        }
        let rr: Vec<&str> = msg.values(HeaderName::RecordRoute).collect();
        let ours: Vec<bool> = rr
            .iter()
            .map(|v| NameAddr::parse(v, "Record-Route").is_ok_and(|n| self.is_us(&n.uri)))
            .collect();
        let (Some(first), Some(last)) =
            (ours.iter().position(|o| *o), ours.iter().rposition(|o| *o))
        else {
            return (String::new(), String::new());
        };
        let to_callee: Vec<&str> = rr[..first].iter().rev().copied().collect();
        (rr[last + 1..].join(", "), to_callee.join(", "))
    }

    /// `<sip:HOST:PORT;lr;sg=MAC>` naming one of our listeners (what we add when the
    /// transport does not change; the MAC is not checked here, only the shape).
    fn is_plain_own_rr(&self, v: &str) -> bool {
        let Some((hp, params)) = v
            .strip_prefix("<sip:")
            .and_then(|r| r.strip_suffix('>'))
            .and_then(|r| r.split_once(';'))
        else {
            return false;
        };
        let signed = params
            .strip_prefix("lr;sg=")
            .is_some_and(|t| crate::mac::parse_tag(t).is_some());
        (params == "lr" || signed)
            && hp
                .rsplit_once(':')
                .is_some_and(|(h, p)| p.parse().is_ok_and(|p| self.is_us_host(h, Some(p))))
    }

    pub(super) fn local_reply(&self, ctx: &Ctx, code: u16, reason: &str) -> Bytes {
        Stats::inc(&self.stats.local_replies);
        let extra = if code == 503 {
            vec!["Retry-After: 5".to_string()]
        } else {
            vec![]
        };
        match &ctx.req {
            Some(req) => local_response(
                req,
                code,
                self.public_reason(code, reason),
                &self.local_tag(req.call_id()),
                &extra,
                &self.cfg.server,
            ),
            None => Bytes::new(),
        }
    }

    pub(super) fn send_upstream(
        &self,
        now: Instant,
        ctx: &mut Ctx,
        code: u16,
        data: Bytes,
        out: &mut Vec<Transmit>,
    ) {
        Stats::inc(&self.stats.fwd_replies);
        if ctx.server.send_response(now, code, data.clone()) {
            self.flush_server(ctx, out);
        } else if (200..300).contains(&code) && ctx.invite {
            out.push(Transmit {
                target: ctx.resp_target,
                data,
                origin: None,
                tls_name: None,
            });
        }
    }

    /// A reply whose top Via is another node's reached this one (a media server answering
    /// the address its call came from rather than the Via, a VIP that moved): handed to
    /// that node as it is, which checks its branch like any reply. True when handed on.
    fn to_peer(&self, msg: &Message, out: &mut Vec<Transmit>) -> bool {
        let Some(peers) = &self.peers else {
            return false;
        };
        let Some(Ok(via)) = msg.vias().next() else {
            return false;
        };
        let Some(ip) = host_ip(via.host) else {
            return false;
        };
        let to = SocketAddr::new(ip, via.port.unwrap_or(5060));
        if !peers.contains(to) || self.names_host(via.host, via.port, false) {
            return false;
        }
        Stats::inc(&self.stats.fwd_replies);
        out.push(Transmit {
            target: Target {
                transport: Transport::Udp,
                addr: to,
                flow: None,
            },
            data: msg.bytes().clone(),
            origin: None,
            tls_name: None,
        });
        true
    }

    pub(super) fn forward_response_stateless(&self, msg: &Message, out: &mut Vec<Transmit>) {
        let Some(next) = msg.vias().nth(1).and_then(Result::ok) else {
            return;
        };
        let Some(target) = via_target(&next) else {
            return;
        };
        Stats::inc(&self.stats.fwd_replies);
        out.push(Transmit {
            target,
            data: strip_top_via(msg),
            origin: None,
            tls_name: None,
        });
    }
}

/// Where a response goes by a Via value (§18.2.2 with RFC 3581): received and rport win.
fn via_target(v: &Via) -> Option<Target> {
    let transport = Transport::parse(v.transport)?;
    let ip = v.received().and_then(host_ip).or_else(|| host_ip(v.host))?;
    let port = v.rport().flatten().or(v.port).unwrap_or(5060);
    Some(Target {
        transport,
        addr: SocketAddr::new(ip, port),
        flow: None,
    })
}

/// The longest registration a 2xx to a REGISTER grants: its Contacts' `expires`
/// parameters, or its Expires header (capped at a day).
fn granted_expires(msg: &Message) -> Option<u64> {
    let header = msg
        .get(HeaderName::Expires)
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut best: Option<u64> = None;
    for v in msg.values(HeaderName::Contact) {
        let Ok(na) = NameAddr::parse(v, "Contact") else {
            continue;
        };
        let e = na
            .params
            .value("expires")
            .and_then(|e| e.trim().parse::<u64>().ok())
            .or(header);
        if let Some(e) = e {
            best = Some(best.map_or(e, |b| b.max(e)));
        }
    }
    best.filter(|e| *e > 0).map(|e| e.min(86_400))
}
