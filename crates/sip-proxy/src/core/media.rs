//! Media through the relay: the offer on a request's SDP (the branch waits for it), the
//! answer on a reply's SDP (the reply waits), late offers (SDP in the 2xx, answer in the
//! ACK), and the delete when the call ends or fails. What to ask and with which flags is
//! decided in [`crate::media`]; here it is wired into the transactions.

use std::collections::HashSet;

use super::*;
use crate::command::{CommandKind, EventResult};
use crate::ctx::{BranchMedia, CtxMedia, Wait, WaitFor};
use crate::media::{self, MediaError, MediaOp, MediaRequest};

/// Calls remembered as relayed at most (their BYE then deletes the session).
const MAX_MEDIA_CALLS: usize = 1_000_000;

/// What a branch about to start does with its media.
pub(super) enum BranchStep {
    /// Sent as received (no relay).
    Plain,
    /// Through the relay: the new SDP (`None`: a late offer, no SDP in the request).
    Relayed(Option<Bytes>, Box<BranchMedia>),
    /// The offer was asked: the context waits.
    Wait,
    /// The call is refused (the fallback says why).
    Refuse,
}

/// What a reply with SDP does.
pub(super) enum ReplyStep {
    /// Relayed as received.
    Pass,
    /// Relayed with this text (top Via removed, SDP rewritten).
    Rewritten(Bytes),
    /// Waits for the relay.
    Parked,
    /// Not relayed.
    Drop,
}

impl ReplyStep {
    /// True when the reply goes upstream now.
    pub fn goes_now(&self) -> bool {
        matches!(self, ReplyStep::Pass | ReplyStep::Rewritten(_))
    }

    /// What goes upstream now (`msg` without our Via, or its rewritten text), if anything.
    pub fn upstream(self, msg: &Message) -> Option<Bytes> {
        match self {
            ReplyStep::Pass => Some(strip_top_via(msg)),
            ReplyStep::Rewritten(data) => Some(data),
            ReplyStep::Parked | ReplyStep::Drop => None,
        }
    }
}

/// A reply waiting for the relay.
pub(crate) struct ParkedReply {
    pub idx: usize,
    pub code: u16,
    pub msg: Message,
    /// The first final response of the context (dialog and balancer bookkeeping follow).
    pub first: bool,
}

/// The relayed calls (by Call-ID): their end deletes the session.
#[derive(Default)]
pub(crate) struct MediaCalls(Mutex<HashSet<Box<str>>>);

impl MediaCalls {
    fn insert(&self, call_id: &str) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() < MAX_MEDIA_CALLS && !g.contains(call_id) {
            g.insert(call_id.into());
        }
    }
    fn remove(&self, call_id: &str) -> bool {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let had = g.remove(call_id);
        if g.capacity() > 4 * g.len() + 1024 {
            g.shrink_to_fit();
        }
        had
    }
    pub fn contains(&self, call_id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(call_id)
    }
    pub fn len(&self) -> usize {
        self.0.lock().map_or(0, |g| g.len())
    }
}

fn body_hash(b: &[u8]) -> u64 {
    hash64(0, b)
}

/// `data` (a whole message) with its body replaced.
fn with_body(data: Bytes, body: &[u8]) -> Bytes {
    match Message::parse_raw(data.clone()) {
        Ok(m) => Bytes::from(Editor::new(&m).set_body(body).finish()),
        Err(_) => data,
    }
}

/// True when a URI's host is a private address other than `addr`'s: a contact behind NAT.
fn contact_behind_nat(uri: &str, addr: SocketAddr) -> bool {
    Uri::parse(uri).is_ok_and(|u| {
        host_ip(u.host).is_some_and(|ip| {
            ip != addr.ip()
                && media::behind_nat(
                    &media::SdpInfo {
                        addr: Some(ip),
                        ..Default::default()
                    },
                    addr.ip(),
                )
        })
    })
}

impl Proxy {
    /// Adds the media relay (rtpengine) with its policy.
    pub fn with_media(mut self, cfg: crate::media::MediaConfig) -> Proxy {
        self.media = Some(cfg);
        self
    }

    /// The media policy, when a relay is configured.
    pub fn media(&self) -> Option<&crate::media::MediaConfig> {
        self.media.as_ref()
    }

    /// Calls whose media is relayed now.
    pub fn media_calls(&self) -> usize {
        self.media_calls.len()
    }

    /// Dialogs restored after a restart may have relayed media: their end deletes it.
    pub fn media_restored<'a>(&self, call_ids: impl Iterator<Item = &'a str>) {
        if self.media.is_some() {
            for c in call_ids {
                self.media_calls.insert(c);
            }
        }
    }

    /// Deletes call `call_id`'s media session, when it has one.
    pub(super) fn media_delete(&self, call_id: &str) {
        if self.media.is_none() || !self.media_calls.remove(call_id) {
            return;
        }
        Stats::inc(&self.stats.media_deletes);
        let req = MediaRequest {
            op: MediaOp::Delete,
            call_id: call_id.to_string(),
            from_tag: String::new(),
            to_tag: String::new(),
            via_branch: String::new(),
            sdp: Bytes::new(),
            flags: Default::default(),
            set: self.media.as_ref().map_or(0, |m| m.set),
        };
        self.waits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fire(CommandKind::Media(Box::new(req)));
        self.has_commands.store(true, Ordering::Release);
    }

    /// Parks `ctx` on a media command (`None`: too many are waiting).
    fn media_wait(
        &self,
        now: Instant,
        ctx: &mut Ctx,
        req: MediaRequest,
        what: WaitFor,
    ) -> Option<()> {
        let cfg = self.media.as_ref()?;
        let mut w = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        if w.waiting >= cfg.max_waiting {
            Stats::inc(&self.stats.waits_refused);
            return None;
        }
        let (id, cmd) = w.wait_media(req, Some(ctx.id), None, now + cfg.wait);
        drop(w);
        Stats::inc(&self.stats.commands_sent);
        ctx.outbox = Some(cmd);
        ctx.wait = Some(Wait {
            id,
            deadline: now + cfg.wait,
            name: "media relay".into(),
            what,
        });
        Some(())
    }

    /// Decides the media of the branch to candidate `at` (destination `dest`): plain, through
    /// the relay with the offer's SDP (asked now, or answered already), or refused.
    pub(super) fn branch_media(
        &self,
        now: Instant,
        ctx: &mut Ctx,
        at: usize,
        dest: &Destination,
    ) -> BranchStep {
        let Some(req) = ctx.req.as_ref() else {
            return BranchStep::Plain;
        };
        if !matches!(req.method(), Some(Method::Invite) | Some(Method::Update)) {
            return BranchStep::Plain;
        }
        let Some(cfg) = &self.media else {
            let ws = |t: Transport| matches!(t, Transport::Ws | Transport::Wss);
            if ws(ctx.plan.in_transport) != ws(dest.transport) && req.to_tag().is_none() {
                Stats::inc(&self.stats.media_unavailable);
                if !self.media_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(call_id = req.call_id(), "a call between a browser and a SIP phone cannot carry media without a relay: configure [rtpengine] (logged once)");
                }
            }
            return BranchStep::Plain;
        };
        if let Some(m) = ctx.media.as_mut() {
            if let Some((_, body, answer)) = m.ready.take_if(|r| r.0 == at) {
                return match body {
                    Some(b) => BranchStep::Relayed(
                        Some(b),
                        Box::new(BranchMedia {
                            answer,
                            ..Default::default()
                        }),
                    ),
                    None => BranchStep::Plain,
                };
            }
        }
        let src = ctx.resp_target.addr;
        let sdp = media::has_sdp(req.get(HeaderName::ContentType), req.body());
        let info = if sdp {
            // an SDP the relay cannot read is its to refuse (488), not ours to guess
            media::inspect(req.body()).unwrap_or_default()
        } else {
            Default::default()
        };
        let from = media::leg_of(ctx.plan.in_transport, sdp.then_some(&info));
        let to = media::leg_of(dest.transport, None);
        let to_nat = dest.flow.is_none() && contact_behind_nat(&dest.uri, dest.addr);
        let (relay, set) = cfg.for_source(src.ip());
        if !media::must_relay(relay, from, &info, src.ip(), to, to_nat) {
            return BranchStep::Plain;
        }
        if !sdp {
            // a late offer: the reply's SDP is the offer, the ACK's the answer
            if req.method() != Some(Method::Invite) || !req.body().is_empty() {
                return BranchStep::Plain;
            }
            return BranchStep::Relayed(
                None,
                Box::new(BranchMedia {
                    late: true,
                    ..Default::default()
                }),
            );
        }
        let (offer, answer) = media::offer_flags(cfg, from, &info, src.ip(), to);
        let mreq = MediaRequest {
            op: MediaOp::Offer,
            call_id: req.call_id().to_string(),
            from_tag: req.from_tag().unwrap_or("").to_string(),
            to_tag: req.to_tag().unwrap_or("").to_string(),
            via_branch: if ctx.plan.parallel {
                ctx.branches.len().to_string()
            } else {
                String::new()
            },
            sdp: Bytes::copy_from_slice(req.body()),
            flags: offer,
            set,
        };
        tracing::debug!(call_id = req.call_id(), from = from.as_str(), to = to.as_str(), flags = %mreq.flags.describe(), "media offer");
        let required = media::relay_required(from, to);
        if self.media_wait(now, ctx, mreq, WaitFor::Offer).is_none() {
            ctx.fallback = (
                503,
                "Service Unavailable (too many calls waiting for the media relay)".into(),
            );
            return BranchStep::Refuse;
        }
        Stats::inc(&self.stats.media_offers);
        let m = ctx.media.get_or_insert_with(Box::<CtxMedia>::default);
        m.offering = Some((at, answer, required));
        BranchStep::Wait
    }

    /// The relay's answer to the offer of a parked context.
    fn on_offer_result(
        &self,
        now: Instant,
        ctx: &mut Ctx,
        r: Result<Bytes, MediaError>,
        out: &mut Vec<Transmit>,
    ) {
        let refuse_on_failure = self.media.as_ref().is_none_or(|m| m.refuse_on_failure);
        let call_id = ctx.call_id().to_string();
        let m = ctx.media.get_or_insert_with(Box::<CtxMedia>::default);
        let Some((at, answer, required)) = m.offering.take() else {
            return;
        };
        match r {
            Ok(sdp) => {
                m.offered = true;
                m.ready = Some((at, Some(sdp), answer));
                self.media_calls.insert(&call_id);
            }
            Err(e) => {
                Stats::inc(&self.stats.media_failures);
                tracing::warn!(call_id, error = %e, "media offer failed");
                if !required && !refuse_on_failure && matches!(e, MediaError::Unavailable(_)) {
                    Stats::inc(&self.stats.media_unrelayed);
                    m.ready = Some((at, None, answer));
                } else {
                    ctx.fallback = match e {
                        MediaError::Refused(r) => (
                            488,
                            format!("Not Acceptable Here (media relay refused the SDP: {r})")
                                .into(),
                        ),
                        MediaError::Unavailable(r) => (
                            503,
                            format!("Service Unavailable (media relay unavailable: {r})").into(),
                        ),
                    };
                    ctx.next_candidate = ctx.candidates.len();
                    self.finalize(now, ctx, out);
                    return;
                }
            }
        }
        ctx.next_candidate = at;
        if !self.start_branch(now, ctx, out) {
            self.finalize(now, ctx, out);
        } else if ctx.plan.parallel {
            while ctx.wait.is_none() && self.start_branch(now, ctx, out) {}
        }
    }

    /// A reply from branch `idx`: its SDP goes to the relay (answer, or offer when the
    /// request had none) and the reply waits; a retransmission reuses the last answer.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn media_reply(
        &self,
        now: Instant,
        ctx: &mut Ctx,
        idx: usize,
        code: u16,
        msg: &Message,
        src: &Source,
        first: bool,
    ) -> ReplyStep {
        let Some(cfg) = &self.media else {
            return ReplyStep::Pass;
        };
        let Some(bm) = ctx.branches[idx].media.as_deref() else {
            return ReplyStep::Pass;
        };
        if !media::has_sdp(msg.get(HeaderName::ContentType), msg.body()) {
            return ReplyStep::Pass;
        }
        let to_tag = msg.to_tag().unwrap_or("");
        let h = body_hash(msg.body());
        if let Some((t, hh, sdp)) = &bm.answered {
            if t == to_tag && *hh == h {
                return ReplyStep::Rewritten(with_body(strip_top_via(msg), sdp));
            }
        }
        if let Some(w) = &ctx.wait {
            let parked_final = ctx
                .media
                .as_ref()
                .and_then(|m| m.parked.as_ref())
                .is_some_and(|p| p.code >= 200);
            if code < 200 || w.what != WaitFor::Answer || parked_final {
                Stats::inc(&self.stats.media_dropped);
                return ReplyStep::Drop;
            }
        }
        let info = media::inspect(msg.body()).unwrap_or_default();
        let b = &ctx.branches[idx];
        let in_leg = media::leg_of(ctx.plan.in_transport, None);
        let (op, from_tag, to_tag, flags) = if bm.late {
            let from = media::leg_of(b.target.transport, Some(&info));
            let (offer, _) = media::offer_flags(cfg, from, &info, src.addr.ip(), in_leg);
            (MediaOp::Offer, to_tag, msg.from_tag().unwrap_or(""), offer)
        } else {
            let mut f = bm.answer.clone();
            media::answer_source(&mut f, Some(&info), src.addr.ip());
            (MediaOp::Answer, msg.from_tag().unwrap_or(""), to_tag, f)
        };
        let mreq = MediaRequest {
            op,
            call_id: msg.call_id().to_string(),
            from_tag: from_tag.to_string(),
            to_tag: to_tag.to_string(),
            via_branch: if ctx.plan.parallel {
                idx.to_string()
            } else {
                String::new()
            },
            sdp: Bytes::copy_from_slice(msg.body()),
            flags,
            set: cfg.for_source(ctx.resp_target.addr.ip()).1,
        };
        if self.media_wait(now, ctx, mreq, WaitFor::Answer).is_none() {
            Stats::inc(&self.stats.media_dropped);
            return ReplyStep::Drop;
        }
        Stats::inc(if op == MediaOp::Offer {
            &self.stats.media_offers
        } else {
            &self.stats.media_answers
        });
        let m = ctx.media.get_or_insert_with(Box::<CtxMedia>::default);
        m.parked = Some(ParkedReply {
            idx,
            code,
            msg: msg.clone(),
            first,
        });
        ReplyStep::Parked
    }

    /// The relay's answer for the parked reply.
    fn on_answer_result(
        &self,
        now: Instant,
        ctx: &mut Ctx,
        r: Result<Bytes, MediaError>,
        out: &mut Vec<Transmit>,
    ) {
        let Some(p) = ctx.media.as_mut().and_then(|m| m.parked.take()) else {
            return;
        };
        let ParkedReply {
            idx,
            code,
            msg,
            first,
        } = p;
        match r {
            Ok(sdp) => {
                let late = ctx.branches[idx].media.as_ref().is_some_and(|m| m.late);
                if let Some(bm) = ctx.branches[idx].media.as_mut() {
                    bm.answered = Some((
                        msg.to_tag().unwrap_or("").to_string(),
                        body_hash(msg.body()),
                        sdp.clone(),
                    ));
                }
                if late {
                    self.media_calls.insert(msg.call_id());
                    if let Some(m) = ctx.media.as_mut() {
                        m.offered = true;
                    }
                }
                let data = with_body(strip_top_via(&msg), &sdp);
                if code < 200 {
                    if !ctx.final_sent {
                        self.send_upstream(now, ctx, code, data, out);
                    }
                } else {
                    if first && ctx.invite && ctx.fast_failover {
                        self.track_dialog(now, ctx, idx, &msg, true);
                    }
                    self.send_upstream(now, ctx, code, data, out);
                }
            }
            Err(e) => {
                Stats::inc(&self.stats.media_failures);
                tracing::warn!(call_id = msg.call_id(), code, error = %e, "media answer failed");
                if code < 200 {
                    Stats::inc(&self.stats.media_dropped);
                    return;
                }
                // the callee answered but its media cannot be relayed: end its side, and
                // tell the caller the call failed
                if ctx.invite {
                    self.end_answered_branch(now, ctx, idx, &msg, out);
                }
                let (c, reason) = match &e {
                    MediaError::Refused(r) => (
                        502,
                        format!("Bad Gateway (media relay refused the answer's SDP: {r})"),
                    ),
                    MediaError::Unavailable(r) => (
                        500,
                        format!("Server Internal Error (media relay unavailable: {r})"),
                    ),
                };
                let data = self.local_reply(ctx, c, &reason);
                self.send_upstream(now, ctx, c, data, out);
                if ctx.invite && ctx.fast_failover {
                    self.router.on_call_ended(msg.call_id());
                    self.media_delete(msg.call_id());
                }
            }
        }
    }

    /// The answer to a media command a context waits for.
    pub(super) fn on_media_event(
        &self,
        now: Instant,
        ctx: &mut Ctx,
        what: WaitFor,
        r: Result<Bytes, MediaError>,
        out: &mut Vec<Transmit>,
    ) {
        match what {
            WaitFor::Offer => self.on_offer_result(now, ctx, r, out),
            WaitFor::Answer => self.on_answer_result(now, ctx, r, out),
            WaitFor::Name => {}
        }
    }

    /// An ACK for a 2xx carrying SDP: the answer to a late offer, when the call's media is
    /// relayed. Gives the ACK back when it is not for the relay.
    pub(super) fn media_ack(
        &self,
        now: Instant,
        src: &Source,
        msg: &Message,
        t: Transmit,
        out: &mut Vec<Transmit>,
    ) {
        let Some(cfg) = &self.media else {
            return out.push(t);
        };
        if !media::has_sdp(msg.get(HeaderName::ContentType), msg.body())
            || !self.media_calls.contains(msg.call_id())
        {
            return out.push(t);
        }
        let info = media::inspect(msg.body()).unwrap_or_default();
        let offerer = media::leg_of(t.target.transport, None);
        let answerer = media::leg_of(src.transport, Some(&info));
        let mut flags = media::answer_flags(offerer, answerer);
        media::answer_source(&mut flags, Some(&info), src.addr.ip());
        let req = MediaRequest {
            op: MediaOp::Answer,
            call_id: msg.call_id().to_string(),
            from_tag: msg.to_tag().unwrap_or("").to_string(),
            to_tag: msg.from_tag().unwrap_or("").to_string(),
            via_branch: String::new(),
            sdp: Bytes::copy_from_slice(msg.body()),
            flags,
            set: cfg.for_source(src.addr.ip()).1,
        };
        let mut w = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        if w.by_id.len() >= cfg.max_waiting {
            // the command table is full (a party sending ACKs with SDP in a loop): the
            // ACK goes on as it was
            drop(w);
            Stats::inc(&self.stats.waits_refused);
            return out.push(t);
        }
        Stats::inc(&self.stats.media_answers);
        let (_, cmd) = w.wait_media(req, None, Some(t), now + cfg.wait);
        w.outbox.push(cmd);
        drop(w);
        self.has_commands.store(true, Ordering::Release);
    }

    /// The relay answered for an ACK held for its SDP: sent with the new SDP, or as it
    /// was when the relay failed (the call's signalling completes either way).
    pub(super) fn on_ack_answer(&self, mut t: Transmit, r: EventResult, out: &mut Vec<Transmit>) {
        match r {
            EventResult::Media(Ok(sdp)) => t.data = with_body(t.data, &sdp),
            EventResult::Media(Err(e)) => {
                Stats::inc(&self.stats.media_failures);
                tracing::warn!(error = %e, "media answer for an ACK failed: ACK relayed as it was");
            }
            _ => {}
        }
        out.push(t);
    }

    /// A callee's 2xx that will not go upstream: ACK and BYE to it.
    pub(super) fn end_answered_branch(
        &self,
        now: Instant,
        ctx: &mut Ctx,
        idx: usize,
        msg: &Message,
        out: &mut Vec<Transmit>,
    ) {
        let b = &mut ctx.branches[idx];
        let Ok(inv) = Message::parse_raw(b.request.clone()) else {
            return;
        };
        let Some(via_host) = self.listener(b.target.transport) else {
            return;
        };
        let branch = inv
            .top_via()
            .ok()
            .and_then(|v| v.branch().map(str::to_string))
            .unwrap_or_default();
        let Some((ack, bye)) = make_orphan_ack_bye(
            &inv,
            msg,
            &via_host.to_string(),
            b.target.transport.via_name(),
            &branch,
            &self.cfg.server,
        ) else {
            return;
        };
        out.push(Transmit {
            target: b.target,
            data: ack,
            origin: None,
            tls_name: None,
        });
        if b.bye.is_none() {
            b.bye = Some(ClientNonInvite::new(
                now,
                bye,
                b.target.transport.is_reliable(),
                self.cfg.timers,
            ));
            Stats::inc(&self.stats.orphans_ended);
        }
        self.flush_branch(ctx, idx, out);
    }
}
