//! Questions the core asks the outside, and their answers. A request that needs an answer
//! (a DNS resolution today; an rtpengine offer or a shared-store read next) is parked: the
//! core emits a [`Command`] with an id, the driver runs it and feeds back an [`Event`] with
//! the same id through [`crate::Proxy::on_event`]. Requests asking the same question at
//! the same time share one command.

use std::collections::HashMap;
use std::time::Instant;

use crate::dns::{Answer, DnsError, Query};

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
}

/// A command in flight and the contexts waiting for it.
#[derive(Debug)]
pub(crate) struct Pending {
    pub kind: CommandKind,
    pub waiters: Vec<u64>,
    pub deadline: Instant,
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
            },
        );
        self.by_query.insert(q.clone(), id);
        (id, deadline, Some(Command { id, kind }))
    }

    /// Takes command `id` out of the table (its answer came, or its deadline passed).
    pub fn take(&mut self, id: CommandId) -> Option<Pending> {
        let p = self.by_id.remove(&id)?;
        let CommandKind::Resolve(q) = &p.kind;
        if self.by_query.get(q) == Some(&id) {
            self.by_query.remove(q);
        }
        self.waiting = self.waiting.saturating_sub(p.waiters.len());
        Some(p)
    }

    /// Drops the commands whose deadline passed; their answers, when they come, are late.
    pub fn expire(&mut self, now: Instant) -> usize {
        let due: Vec<CommandId> = self
            .by_id
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            self.take(*id);
        }
        due.len()
    }
}
