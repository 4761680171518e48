//! Parked requests: a candidate whose next hop is a name is expanded from the DNS cache,
//! or the context waits for the driver's answer to a lookup (see [`crate::command`]).

use super::*;
use crate::command::{Command, Event, EventResult};
use crate::ctx::{Wait, WaitFor};
use crate::dns::{DnsError, Lookup, Query};

/// What became of a named candidate.
pub(super) enum Expanded {
    /// Replaced by its addresses, or given up (the fallback says why): go on.
    Done,
    /// The context waits for a lookup.
    Waiting,
}

impl Proxy {
    /// Hands the driver the commands made since the last call.
    pub fn poll_commands(&self, out: &mut Vec<Command>) {
        // a load first: the common case (nothing to run) writes no shared cache line
        if !self.has_commands.load(Ordering::Relaxed)
            || !self.has_commands.swap(false, Ordering::Acquire)
        {
            return;
        }
        let mut w = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        out.append(&mut w.outbox);
    }

    /// Requests parked on commands.
    pub fn waiting(&self) -> usize {
        self.waits.lock().map_or(0, |w| w.waiting)
    }

    /// The driver's answer to a command. Every request parked on it goes on; an answer
    /// after the command's deadline is dropped (its requests were already answered).
    pub fn on_event(&self, now: Instant, ev: Event, out: &mut Vec<Transmit>) {
        let pending = self
            .waits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(ev.id);
        let Some(pending) = pending else {
            Stats::inc(&self.stats.events_late);
            tracing::debug!(
                id = ev.id,
                "answer to a command after its deadline: dropped"
            );
            return;
        };
        if let Some(t) = pending.ack {
            return self.on_ack_answer(t, ev.result, out);
        }
        let media = match (&pending.kind, ev.result) {
            (crate::command::CommandKind::Resolve(q), EventResult::Resolved(r)) => {
                if let Err(e) = &r {
                    tracing::warn!(name = %q, error = %e, "DNS lookup failed");
                }
                self.dns.store(now, q, r);
                None
            }
            (crate::command::CommandKind::Media(_), EventResult::Media(r)) => Some(r),
            _ => {
                tracing::error!(
                    id = ev.id,
                    "an answer of another kind than its command: dropped"
                );
                return;
            }
        };
        for ctx_id in pending.waiters {
            let s = self.shard_of_id(ctx_id);
            let mut g = self.lock(s);
            let shard = &mut *g;
            let Some(ctx) = shard.ctxs.get_mut(&ctx_id) else {
                continue;
            };
            if ctx.wait.as_ref().is_none_or(|w| w.id != ev.id) {
                continue; // cancelled, or timed out and moved on
            }
            let what = ctx.wait.take().map_or(WaitFor::Name, |w| w.what);
            match &media {
                Some(r) => self.on_media_event(now, ctx, what, r.clone(), out),
                None => {
                    if !self.start_branch(now, ctx, out) {
                        self.finalize(now, ctx, out);
                    } else if ctx.plan.parallel {
                        while ctx.wait.is_none() && self.start_branch(now, ctx, out) {}
                    }
                }
            }
            self.settle(shard, ctx_id);
        }
    }

    /// A parked context's deadline passed: the name is given up, the next candidate tried.
    pub(super) fn wait_timeout(&self, now: Instant, ctx: &mut Ctx, out: &mut Vec<Transmit>) {
        let Some(w) = ctx.wait.take_if(|w| w.deadline <= now) else {
            return;
        };
        Stats::inc(&self.stats.waits_timed_out);
        if w.what != WaitFor::Name {
            let e = crate::media::MediaError::Unavailable("no answer in time".into());
            return self.on_media_event(now, ctx, w.what, Err(e), out);
        }
        tracing::warn!(name = %w.name, call_id = ctx.call_id(), "no DNS answer in time");
        let e = crate::Error::Dns(DnsError::Unreachable {
            name: w.name.to_string(),
            detail: "no answer in time".into(),
        });
        let (code, reason) = e.status(ctx.plan.request_target);
        ctx.fallback = (code, reason.into());
        ctx.next_candidate += 1;
        if !self.start_branch(now, ctx, out) {
            self.finalize(now, ctx, out);
        }
    }

    /// The candidate at `ctx.next_candidate - 1` is a name: put its addresses in its place
    /// (cache hit), give it up (cached failure), or park the context on a lookup.
    pub(super) fn expand_name(&self, now: Instant, ctx: &mut Ctx, q: &Arc<Query>) -> Expanded {
        let at = ctx.next_candidate - 1;
        let recs = match self.dns.lookup(now, q) {
            Lookup::Fresh(r) | Lookup::Stale(r) => r,
            Lookup::Failed(e) => {
                self.name_failed(ctx, q, &e);
                return Expanded::Done;
            }
            Lookup::Miss => {
                let mut w = self.waits.lock().unwrap_or_else(|p| p.into_inner());
                if w.waiting >= self.dns.config().max_waiting {
                    drop(w);
                    Stats::inc(&self.stats.waits_refused);
                    let e = crate::Error::Overloaded(format!(
                        "too many requests waiting for DNS; {} not resolved",
                        q.host
                    ));
                    let (code, reason) = e.status(false);
                    ctx.fallback = (code, reason.into());
                    return Expanded::Done;
                }
                let (id, deadline, cmd) = w.wait_for(q, ctx.id, now + self.dns.config().wait);
                drop(w);
                if cmd.is_some() {
                    Stats::inc(&self.stats.commands_sent);
                }
                ctx.outbox = cmd;
                ctx.wait = Some(Wait {
                    id,
                    deadline,
                    name: q.host.clone(),
                    what: crate::ctx::WaitFor::Name,
                });
                ctx.next_candidate = at;
                return Expanded::Waiting;
            }
        };
        let named = ctx.candidates[at].clone();
        let seed = crate::dns::splitmix(self.cfg.salt ^ ctx.id);
        let mut expanded: Vec<Destination> = crate::dns::order(&recs, seed)
            .into_iter()
            .map(|r| Destination {
                uri: named.uri.clone(),
                transport: r.transport,
                addr: r.addr,
                flow: None,
                // the router gives each address its own health (a set's named destination)
                node: None,
                route: named.route.clone(),
                name: None,
            })
            .collect();
        self.router.name_targets(&named, &mut expanded);
        if expanded.is_empty() {
            ctx.fallback = (
                503,
                format!("Service Unavailable (every address of {} is down)", q.host).into(),
            );
        }
        ctx.candidates.splice(at..at + 1, expanded);
        ctx.next_candidate = at;
        Expanded::Done
    }

    /// A name that gave no address: a name of the request's own that does not exist is
    /// `604` (it exists nowhere); one of the configuration's, or a DNS server that does not
    /// answer, is `503`.
    fn name_failed(&self, ctx: &mut Ctx, q: &Query, e: &DnsError) {
        Stats::inc(&self.stats.dns_failures);
        tracing::warn!(name = %q, error = %e, call_id = ctx.call_id(), "destination name did not resolve");
        let (code, reason) = crate::Error::from(e.clone()).status(ctx.plan.request_target);
        ctx.fallback = (code, reason.into());
    }

    /// The address to send a stateless message (an ACK for a 2xx) to a named next hop:
    /// from the cache only.
    pub(super) fn cached_target(&self, now: Instant, dest: &Destination) -> Option<Target> {
        let Some(q) = &dest.name else {
            return Some(Target {
                transport: dest.transport,
                addr: dest.addr,
                flow: dest.flow,
            });
        };
        match self.dns.lookup(now, q) {
            Lookup::Fresh(r) | Lookup::Stale(r) => {
                let r = crate::dns::order(&r, self.cfg.salt).into_iter().next()?;
                Some(Target {
                    transport: r.transport,
                    addr: r.addr,
                    flow: None,
                })
            }
            _ => None,
        }
    }
}
