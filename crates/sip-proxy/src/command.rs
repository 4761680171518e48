//! Questions the core asks the outside, and their answers. A request that needs an answer
//! (a DNS resolution, an rtpengine offer or answer) is parked: the
//! core emits a [`Command`] with an id, the driver runs it and feeds back an [`Event`] with
//! the same id through [`crate::Proxy::on_event`]. Requests asking the same question at
//! the same time share one command.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;

use crate::dns::{Answer, DnsError, Query};
use crate::media::{MediaError, MediaRequest};
use crate::types::Transmit;

/// Identifies a command and the event answering it.
pub type CommandId = u64;

/// Something the driver must do and answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub id: CommandId,
    pub kind: CommandKind,
}

/// What a command asks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandKind {
    /// Resolve a name the RFC 3263 way (NAPTR → SRV → A/AAAA).
    Resolve(Query),
    /// Ask the media relay (offer, answer); a `delete` is sent with no one waiting.
    Media(Box<MediaRequest>),
}

/// The driver's answer to command `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: CommandId,
    pub result: EventResult,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventResult {
    /// The answer to [`CommandKind::Resolve`].
    Resolved(Result<Answer, DnsError>),
    /// The answer to [`CommandKind::Media`]: the SDP the relay rewrote.
    Media(Result<Bytes, MediaError>),
}

/// A command in flight and the contexts waiting for it.
#[derive(Debug)]
pub(crate) struct Pending {
    pub kind: CommandKind,
    pub waiters: Vec<u64>,
    pub deadline: Instant,
    /// A stateless ACK held for its SDP (a late offer's answer), sent with the new body.
    pub ack: Option<Transmit>,
}

/// The commands in flight, and those not yet handed to the driver.
#[derive(Debug, Default)]
pub(crate) struct Waits {
    pub by_id: HashMap<CommandId, Pending>,
    pub by_query: HashMap<Query, CommandId>,
    /// Commands for the driver ([`crate::Proxy::poll_commands`]).
    pub outbox: Vec<Command>,
    /// Contexts waiting, over all commands.
    pub waiting: usize,
    pub next_id: CommandId,
}

impl Waits {
    /// Registers context `ctx` as waiting for `q`: joins a command in flight, or makes a
    /// new one (returned, to be released once the context is in its table). Gives the
    /// command's id and deadline.
    pub fn wait_for(
        &mut self,
        q: &Query,
        ctx: u64,
        deadline: Instant,
    ) -> (CommandId, Instant, Option<Command>) {
        self.waiting += 1;
        if let Some(&id) = self.by_query.get(q) {
            if let Some(p) = self.by_id.get_mut(&id) {
                p.waiters.push(ctx);
                return (id, p.deadline, None);
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        let kind = CommandKind::Resolve(q.clone());
        self.by_id.insert(
            id,
            Pending {
                kind: kind.clone(),
                waiters: vec![ctx],
                deadline,
                ack: None,
            },
        );
        self.by_query.insert(q.clone(), id);
        (id, deadline, Some(Command { id, kind }))
    }

    /// A media command for context `ctx` (or, with `ctx` `None`, for the ACK `ack`): never
    /// shared. Gives its id and the command, to be released once the context is in its table.
    pub fn wait_media(
        &mut self,
        req: MediaRequest,
        ctx: Option<u64>,
        ack: Option<Transmit>,
        deadline: Instant,
    ) -> (CommandId, Command) {
        self.next_id += 1;
        let id = self.next_id;
        let kind = CommandKind::Media(Box::new(req));
        self.waiting += usize::from(ctx.is_some());
        self.by_id.insert(
            id,
            Pending {
                kind: kind.clone(),
                waiters: ctx.into_iter().collect(),
                deadline,
                ack,
            },
        );
        (id, Command { id, kind })
    }

    /// A command no one waits for (a media `delete`): straight to the outbox.
    pub fn fire(&mut self, kind: CommandKind) {
        self.next_id += 1;
        let id = self.next_id;
        self.outbox.push(Command { id, kind });
    }

    /// Takes command `id` out of the table (its answer came, or its deadline passed).
    pub fn take(&mut self, id: CommandId) -> Option<Pending> {
        let p = self.by_id.remove(&id)?;
        if let CommandKind::Resolve(q) = &p.kind {
            if self.by_query.get(q) == Some(&id) {
                self.by_query.remove(q);
            }
        }
        self.waiting = self.waiting.saturating_sub(p.waiters.len());
        Some(p)
    }

    /// Drops the commands whose deadline passed; their answers, when they come, are late.
    /// Gives the ACKs that were held for them.
    pub fn expire(&mut self, now: Instant) -> Vec<Transmit> {
        let due: Vec<CommandId> = self
            .by_id
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        due.iter()
            .filter_map(|id| self.take(*id).and_then(|p| p.ack))
            .collect()
    }
}
