//! Timers and bookkeeping: firing transaction and branch timers, re-arming or dropping a
//! context, flushing what its transactions want sent.

use super::*;

impl Proxy {
    pub(super) fn ctx_timeout(&self, now: Instant, ctx: &mut Ctx, out: &mut Vec<Transmit>) {
        self.wait_timeout(now, ctx, out);
        if let ServerTxn::Invite(s) = &mut ctx.server {
            if s.on_timeout(now) == Some(TxnEvent::AckTimeout) {
                tracing::debug!(call_id = ctx.call_id(), "no ACK for the final response");
            }
        } else if let ServerTxn::NonInvite(s) = &mut ctx.server {
            s.on_timeout(now);
        }
        self.flush_server(ctx, out);
        for i in 0..ctx.branches.len() {
            let b = &mut ctx.branches[i];
            let ev = b.txn.on_timeout(now);
            for t in [&mut b.cancel, &mut b.bye].into_iter().flatten() {
                t.on_timeout(now);
            }
            self.flush_branch(ctx, i, out);
            let b = &mut ctx.branches[i];
            if b.abandon_at.is_some_and(|d| d <= now) && !b.txn.is_terminated() {
                // cancelled 64·T1 ago and still no final response (§9.1): give it up
                tracing::debug!(destination = %b.dest.uri, "no final response after CANCEL: transaction destroyed");
                b.txn.terminate();
                b.abandon_at = None;
                if !b.done {
                    b.done = true;
                    if ctx.best.is_none() {
                        ctx.fallback = (408, "Request Timeout".into());
                    }
                    self.finalize(now, ctx, out);
                }
                continue;
            }
            if b.done {
                continue;
            }
            if ev == Some(TxnEvent::Timeout) {
                Stats::inc(&self.stats.branch_timeouts);
                self.branch_failed(now, ctx, i, 408, "Request Timeout", out);
            } else if !b.provisional && b.silence_deadline.is_some_and(|d| d <= now) {
                Stats::inc(&self.stats.branch_timeouts);
                tracing::warn!(destination = %b.dest.uri, "destination did not answer in time");
                self.branch_failed(now, ctx, i, 408, "Request Timeout", out);
            } else if b.final_deadline.is_some_and(|d| d <= now) {
                // Timer C: cancel a branch that rings forever
                Stats::inc(&self.stats.branch_timeouts);
                self.cancel_branch(now, ctx, i, out);
                let b = &mut ctx.branches[i];
                b.done = true;
                if ctx.best.is_none() {
                    ctx.fallback = (408, "Request Timeout".into());
                }
                self.finalize(now, ctx, out);
            }
        }
    }

    /// Re-arms the context's timer, or drops it when all its transactions are over.
    pub(super) fn settle(&self, shard: &mut Shard, id: u64) {
        let Some(ctx) = shard.ctxs.get_mut(&id) else {
            return;
        };
        if let Some(c) = ctx.outbox.take() {
            // the context is in its table: the answer will find it
            self.waits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .outbox
                .push(c);
            self.has_commands.store(true, Ordering::Release);
        }
        if ctx.final_sent && ctx.req.is_some() && ctx.all_branches_done() {
            ctx.req = None;
            ctx.candidates = Vec::new();
            ctx.plan.route_edits = Vec::new();
        }
        if ctx.is_finished() {
            let ctx = shard.ctxs.remove(&id);
            if let Some(ctx) = ctx {
                if shard.by_key.get(&ctx.key) == Some(&id) {
                    shard.by_key.remove(&ctx.key);
                }
                if let Some(k) = ctx.counted {
                    self.uncount_source(k);
                }
            }
            return;
        }
        if let Some(t) = ctx.next_timeout() {
            if ctx.armed.is_none_or(|a| t < a) {
                ctx.armed = Some(t);
                shard.timers.push(Reverse((t, id)));
                self.note_timer(t);
            }
        }
    }

    pub(super) fn flush_server(&self, ctx: &mut Ctx, out: &mut Vec<Transmit>) {
        while let Some(data) = ctx.server.poll_transmit() {
            out.push(Transmit {
                target: ctx.resp_target,
                data,
                origin: None,
                tls_name: None,
            });
        }
    }

    pub(super) fn flush_branch(&self, ctx: &mut Ctx, i: usize, out: &mut Vec<Transmit>) {
        let b = &mut ctx.branches[i];
        let origin = Some(Origin::Relay {
            ctx: ctx.id,
            branch: i as u32,
        });
        // a TLS connection to a destination named by a host name must meet a certificate
        // for that name (only the request that may open it needs to say)
        let tls_name = (b.target.transport == Transport::Tls && b.target.flow.is_none())
            .then(|| {
                sip_wire::Uri::parse(&b.dest.uri)
                    .ok()
                    .filter(|u| super::host_ip(u.host).is_none())
                    .map(|u| std::sync::Arc::<str>::from(u.host))
            })
            .flatten();
        while let Some(data) = b.txn.poll_transmit() {
            if !data.is_empty() {
                out.push(Transmit {
                    target: b.target,
                    data,
                    origin,
                    tls_name: tls_name.clone(),
                });
            }
        }
        for t in [&mut b.cancel, &mut b.bye].into_iter().flatten() {
            while let Some(data) = t.poll_transmit() {
                out.push(Transmit {
                    target: b.target,
                    data,
                    origin: None,
                    tls_name: None,
                });
            }
        }
    }
}
