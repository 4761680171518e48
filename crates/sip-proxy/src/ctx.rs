//! The per-request proxy context: one server transaction and the branches (client
//! transactions) it forwarded to, with the best response collected so far (§16.7).

use std::time::Instant;

use bytes::Bytes;
use sip_txn::{
    ClientInvite, ClientInviteState, ClientNonInvite, ClientNonInviteState, ServerInvite,
    ServerInviteState, ServerNonInvite, ServerNonInviteState,
};
use sip_wire::Message;

use crate::types::{Destination, FlowId, Target, Transport};

pub(crate) enum ServerTxn {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

impl ServerTxn {
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        match self {
            ServerTxn::Invite(t) => t.poll_transmit(),
            ServerTxn::NonInvite(t) => t.poll_transmit(),
        }
    }
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self {
            ServerTxn::Invite(t) => t.poll_timeout(),
            ServerTxn::NonInvite(t) => t.poll_timeout(),
        }
    }
    pub fn send_response(&mut self, now: Instant, code: u16, msg: Bytes) -> bool {
        match self {
            ServerTxn::Invite(t) => t.send_response(now, code, msg),
            ServerTxn::NonInvite(t) => t.send_response(now, code, msg),
        }
    }
    pub fn is_terminated(&self) -> bool {
        match self {
            ServerTxn::Invite(t) => t.state() == ServerInviteState::Terminated,
            ServerTxn::NonInvite(t) => t.state() == ServerNonInviteState::Terminated,
        }
    }
}

pub(crate) enum ClientTxn {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

impl ClientTxn {
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        match self {
            ClientTxn::Invite(t) => t.poll_transmit(),
            ClientTxn::NonInvite(t) => t.poll_transmit(),
        }
    }
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self {
            ClientTxn::Invite(t) => t.poll_timeout(),
            ClientTxn::NonInvite(t) => t.poll_timeout(),
        }
    }
    pub fn on_timeout(&mut self, now: Instant) -> Option<sip_txn::TxnEvent> {
        match self {
            ClientTxn::Invite(t) => t.on_timeout(now),
            ClientTxn::NonInvite(t) => t.on_timeout(now),
        }
    }
    pub fn on_transport_error(&mut self) -> Option<sip_txn::TxnEvent> {
        match self {
            ClientTxn::Invite(t) => t.on_transport_error(),
            ClientTxn::NonInvite(t) => t.on_transport_error(),
        }
    }
    pub fn terminate(&mut self) {
        match self {
            ClientTxn::Invite(t) => t.terminate(),
            ClientTxn::NonInvite(t) => t.terminate(),
        }
    }
    pub fn is_terminated(&self) -> bool {
        match self {
            ClientTxn::Invite(t) => t.state() == ClientInviteState::Terminated,
            ClientTxn::NonInvite(t) => t.state() == ClientNonInviteState::Terminated,
        }
    }
}

/// One forwarded copy of the request.
pub(crate) struct Branch {
    pub target: Target,
    pub dest: Destination,
    pub txn: ClientTxn,
    /// The request as sent (a CANCEL or ACK is built from it).
    pub request: Bytes,
    pub provisional: bool,
    pub done: bool,
    pub cancel_pending: bool,
    pub cancel: Option<ClientNonInvite>,
    /// BYE for an orphaned 2xx (a branch that answered after another 2xx went upstream).
    pub bye: Option<ClientNonInvite>,
    /// No response at all by then: give up on the branch (failover).
    pub silence_deadline: Option<Instant>,
    /// No final response by then (Timer C): cancel the branch.
    pub final_deadline: Option<Instant>,
    /// A CANCEL went out: if no final response comes by then (64·T1), the INVITE client
    /// transaction is destroyed (RFC 3261 §9.1), so a callee that never answers leaks nothing.
    pub abandon_at: Option<Instant>,
    /// The branch's media goes through the relay.
    pub media: Option<Box<BranchMedia>>,
}

/// A relayed branch's media state.
#[derive(Debug, Default)]
pub(crate) struct BranchMedia {
    /// Flags of the answer that will come back (its source added then).
    pub answer: crate::media::Flags,
    /// The request had no SDP: the reply's SDP is the offer (late offer) and the ACK's the
    /// answer.
    pub late: bool,
    /// The last reply SDP the relay rewrote: (to-tag, hash of the SDP received, the SDP
    /// sent), so a retransmitted reply is answered without asking again.
    pub answered: Option<(String, u64, bytes::Bytes)>,
}

/// A context's media state.
#[derive(Default)]
pub(crate) struct CtxMedia {
    /// The offer's outcome for candidate `at`, consumed when its branch starts: the SDP to
    /// send (`None`: unrelayed) and the answer's flags.
    pub ready: Option<(usize, Option<bytes::Bytes>, crate::media::Flags)>,
    /// The offer asked: candidate, the answer's flags, and whether the call cannot work
    /// without the relay.
    pub offering: Option<(usize, crate::media::Flags, bool)>,
    /// A reply waiting for the relay.
    pub parked: Option<crate::core::ParkedReply>,
    /// An offer of this call succeeded (its failure deletes the session).
    pub offered: bool,
}

impl Branch {
    pub fn next_timeout(&self) -> Option<Instant> {
        let mut t = self.txn.poll_timeout();
        let mut take = |o: Option<Instant>| {
            if let Some(o) = o {
                t = Some(t.map_or(o, |t| t.min(o)));
            }
        };
        take(self.cancel.as_ref().and_then(|c| c.poll_timeout()));
        take(self.bye.as_ref().and_then(|c| c.poll_timeout()));
        if !self.txn.is_terminated() {
            take(self.abandon_at);
        }
        if !self.done {
            if !self.provisional {
                take(self.silence_deadline);
            }
            take(self.final_deadline);
        }
        t
    }

    pub fn is_finished(&self) -> bool {
        self.txn.is_terminated()
            && self
                .cancel
                .as_ref()
                .is_none_or(|c| c.state() == ClientNonInviteState::Terminated)
    }
}

/// How to build each branch's copy of the request, decided once (§16.6).
pub(crate) struct Plan {
    /// Header edits removing the Route values that named this proxy.
    pub route_edits: Vec<(usize, Option<String>)>,
    /// A new Request-URI (strict-router fix-up, §16.4).
    pub new_ruri: Option<String>,
    pub record_route: bool,
    pub in_transport: Transport,
    pub in_flow: Option<FlowId>,
    /// Replacement line for the first Via header (received/rport, RFC 3581).
    pub via_fix: Option<(usize, String)>,
    /// Max-Forwards header index and value, if present.
    pub max_forwards: Option<(usize, u8)>,
    /// Loop-detection hash carried in our branch (§16.6 step 8).
    pub loop_hash: u32,
    /// Each branch's Request-URI is its destination's URI (registered contacts).
    pub ruri_from_dest: bool,
    /// Start every candidate at once (parallel forking) instead of one after another.
    pub parallel: bool,
    /// Header lines added on top (Path and Supported of a forwarded REGISTER).
    pub extra_top: Vec<String>,
    /// The candidates are the request's own next hop (its Route or Request-URI), not one
    /// of the configuration's: a name of it that does not exist is the sender's `604`.
    pub request_target: bool,
}

pub(crate) struct Ctx {
    pub id: u64,
    pub key: String,
    pub invite: bool,
    pub resp_target: Target,
    pub server: ServerTxn,
    /// The request as received; released once the final response went upstream and every
    /// branch is done (the context then only absorbs retransmissions).
    pub req: Option<Message>,
    pub plan: Plan,
    pub candidates: Vec<Destination>,
    pub next_candidate: usize,
    pub branches: Vec<Branch>,
    /// Best final non-2xx response so far: code and the message to send upstream.
    pub best: Option<(u16, Bytes)>,
    /// What to answer if no branch produced a response.
    pub fallback: (u16, std::borrow::Cow<'static, str>),
    /// Initial requests give up on a silent destination after `branch_timeout` (failover);
    /// in-dialog requests have one fixed next hop and wait for Timer B/F.
    pub fast_failover: bool,
    pub final_sent: bool,
    pub cancelled: bool,
    pub armed: Option<Instant>,
    /// The source this context counts against (`max_transactions_per_source`).
    pub counted: Option<std::net::IpAddr>,
    /// Parked until the driver answers a command (a DNS lookup of a candidate's name).
    pub wait: Option<Wait>,
    /// A command made for this context, handed to the driver once the context is in its
    /// table (so the answer always finds it).
    pub outbox: Option<crate::command::Command>,
    /// Media relay state (calls whose media goes through rtpengine).
    pub media: Option<Box<CtxMedia>>,
}

/// What a parked context waits for.
pub(crate) struct Wait {
    pub id: crate::command::CommandId,
    pub deadline: Instant,
    /// The name being resolved, for the log and the reason phrase.
    pub name: std::sync::Arc<str>,
    pub what: WaitFor,
}

/// The kind of answer a context waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitFor {
    /// A DNS lookup of the candidate's name.
    Name,
    /// The relay's offer for the candidate about to start.
    Offer,
    /// The relay's answer (or late offer) for the parked reply.
    Answer,
}

impl Ctx {
    pub fn next_timeout(&self) -> Option<Instant> {
        let mut t = self.server.poll_timeout();
        if let Some(w) = &self.wait {
            t = Some(t.map_or(w.deadline, |t| t.min(w.deadline)));
        }
        for b in &self.branches {
            if let Some(bt) = b.next_timeout() {
                t = Some(t.map_or(bt, |t| t.min(bt)));
            }
        }
        t
    }

    pub fn is_finished(&self) -> bool {
        self.server.is_terminated() && self.branches.iter().all(Branch::is_finished)
    }

    /// The Call-ID, for logs.
    pub fn call_id(&self) -> &str {
        self.req.as_ref().map_or("", |r| r.call_id())
    }

    /// Every branch has its final answer and none is still to start (no wait).
    pub fn all_branches_done(&self) -> bool {
        self.wait.is_none() && self.branches.iter().all(|b| b.done)
    }
}
