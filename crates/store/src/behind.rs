//! Write-behind to the database: location bindings, dialogs and CDRs. The core queues
//! changes; a writer per table takes them every period, writes them in one transaction, and
//! keeps what could not be written for the next round, up to a bound (the oldest go first,
//! counted and logged). At SIGTERM each writer takes what is left and writes it before the
//! process exits, within a deadline. A writer that panics is started again with its queue
//! intact; the batch it was writing is then retried one item at a time, and an item whose
//! write panics again is dropped (logged and counted) so one bad record cannot stop a table.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sip_proxy::cdr::{CallRecord, Cdrs};
use sip_proxy::dialog::{Dialogs, DlgEvent};
use sip_proxy::registrar::{LocEvent, Registrar};

/// Whether a store takes the writers' writes: the log says so once when writes start
/// failing and once when they go through again (with how many queued changes were then
/// written), and `/metrics` shows the state and the counts. The state is that of the last
/// write any writer to that store tried.
pub struct Health {
    /// "database" or "redis", for the log.
    store: &'static str,
    up: AtomicBool,
    down_since: Mutex<Option<Instant>>,
    outages: AtomicU64,
    replayed: AtomicU64,
}

/// The process's database health (one database per process).
pub static HEALTH: Health = Health::new("database");

/// The health of the cluster's shared store (Redis), when the process is a cluster node.
pub static SHARED_HEALTH: Health = Health::new("redis");

impl Health {
    const fn new(store: &'static str) -> Health {
        Health {
            store,
            up: AtomicBool::new(true),
            down_since: Mutex::new(None),
            outages: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
        }
    }

    /// A write failed; `pending`: the changes the table holds for later.
    pub fn failed(&self, table: &str, error: &str, pending: usize) {
        let mut since = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        if since.is_none() {
            *since = Some(Instant::now());
            self.up.store(false, Ordering::Relaxed);
            self.outages.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                table,
                error,
                pending,
                "{} writes failing: changes are kept in memory (up to [database] write_queue_limit per table) and written, in order, when it answers again",
                self.store
            );
        } else {
            tracing::debug!(table, error, pending, "{} write failed again", self.store);
        }
    }

    /// A write went through; `replayed`: changes written that had waited for an outage.
    pub fn written(&self, table: &str, replayed: usize) {
        self.replayed.fetch_add(replayed as u64, Ordering::Relaxed);
        if self.up.load(Ordering::Relaxed) {
            if replayed > 0 {
                tracing::info!(
                    table,
                    replayed,
                    "queued changes written to the {}",
                    self.store
                );
            }
            return;
        }
        let mut since = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = since.take() {
            self.up.store(true, Ordering::Relaxed);
            tracing::warn!(
                table,
                replayed,
                down_s = t.elapsed().as_secs_f64(),
                "{} writes work again: the queued changes are being written",
                self.store
            );
        }
    }

    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    pub fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }
}

/// Why a batch was not written.
#[derive(Debug)]
pub struct WriteFail {
    pub message: String,
    /// The database refused the data (see `crate::StoreError::is_refusal`): the batch is
    /// written again one change at a time, and a change refused alone is dropped (logged
    /// and counted), so one bad row cannot stop its table.
    pub refused: bool,
}

impl From<crate::StoreError> for WriteFail {
    fn from(e: crate::StoreError) -> Self {
        WriteFail {
            refused: e.is_refusal(),
            message: e.to_string(),
        }
    }
}

/// One table's writing: where its changes come from and how a batch is written.
pub trait Job: Send + Sync + 'static {
    type Item: Send + 'static;
    /// The table, for logs and metrics.
    const TABLE: &'static str;
    /// The changes the core queued since the last call.
    fn take(&self) -> Vec<Self::Item>;
    /// Writes a batch in one transaction; `Ok(n)`: written, but `n` items could not be turned
    /// into rows and were dropped.
    fn write<'a>(
        &'a self,
        items: &'a [Self::Item],
    ) -> impl Future<Output = Result<usize, WriteFail>> + Send + 'a;
    /// The store whose health the writes report.
    fn health(&self) -> &'static Health {
        &HEALTH
    }
}

/// The state a writer keeps outside its task, so a restart after a panic loses nothing.
struct Shared<I> {
    pending: Mutex<Vec<I>>,
    /// Set when a write panicked: the next batch goes one item at a time.
    careful: AtomicBool,
    /// Set when a write failed: what is written next had waited (counted as replayed).
    behind: AtomicBool,
    dropped: AtomicU64,
    limit: usize,
    last_drop_log: Mutex<Option<Instant>>,
}

impl<I> Shared<I> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<I>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the oldest items beyond the bound (loudly, at most one line every 10 s).
    fn bound(&self, table: &str, q: &mut Vec<I>) {
        if q.len() <= self.limit {
            return;
        }
        let n = q.len() - self.limit;
        q.drain(..n);
        let total = self.dropped.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let mut last = self.last_drop_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::error!(
                table,
                dropped = n,
                dropped_total = total,
                limit = self.limit,
                "write-behind queue full: the oldest changes were dropped (is the database reachable?)"
            );
        }
    }

    /// Puts an unwritten batch back in front of what came since.
    fn put_back(&self, table: &str, mut batch: Vec<I>) {
        if batch.is_empty() {
            return;
        }
        let mut q = self.lock();
        batch.append(&mut q);
        *q = batch;
        self.bound(table, &mut q);
    }
}

/// A batch being written. Whatever of it is not done when it is dropped (a failed write, or
/// a panic cutting the write short) goes back to the queue; after a panic the next round is
/// careful, and in a careful round the item being written when a panic comes (`suspect`) is
/// dropped instead.
struct InFlight<'a, I> {
    shared: &'a Shared<I>,
    table: &'static str,
    batch: Vec<I>,
    /// Items before this one are written.
    done: usize,
    suspect: bool,
}

impl<I> Drop for InFlight<'_, I> {
    fn drop(&mut self) {
        let mut rest = self.batch.split_off(self.done.min(self.batch.len()));
        if std::thread::panicking() {
            self.shared.careful.store(true, Ordering::Relaxed);
            if self.suspect && !rest.is_empty() {
                rest.remove(0);
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    table = self.table,
                    "a change whose write panicked twice was dropped"
                );
            }
        }
        self.shared.put_back(self.table, rest);
    }
}

/// A running writer.
pub struct Writer<J: Job> {
    job: Arc<J>,
    shared: Arc<Shared<J::Item>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl<J: Job> Writer<J> {
    /// Starts writing `job`'s changes every `period`, holding at most `limit` unwritten.
    pub fn start(job: J, period: Duration, limit: usize) -> Writer<J> {
        let job = Arc::new(job);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            careful: AtomicBool::new(false),
            behind: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            limit: limit.max(1),
            last_drop_log: Mutex::new(None),
        });
        let (stop, rx) = tokio::sync::watch::channel(false);
        let (j, s) = (job.clone(), shared.clone());
        let task = net::supervise::spawn(J::TABLE, move || {
            run(j.clone(), s.clone(), rx.clone(), period)
        });
        Writer {
            job,
            shared,
            stop,
            task,
        }
    }

    /// Changes dropped because the queue was full or a change could not be written.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Changes waiting to be written.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.shared.lock().len()
    }

    /// Writes what is left and stops, waiting at most `deadline`; returns how many changes
    /// could not be written by then.
    pub async fn stop(self, deadline: Duration) -> usize {
        let _ = self.stop.send(true);
        if tokio::time::timeout(deadline, self.task).await.is_err() {
            tracing::error!(
                table = J::TABLE,
                "the writer did not finish within {} s",
                deadline.as_secs()
            );
        }
        let left = self.shared.lock().len() + self.job.take().len();
        if left > 0 {
            tracing::error!(
                table = J::TABLE,
                unwritten = left,
                "changes left unwritten at exit"
            );
        }
        left
    }
}

/// A writer's queue, as `/metrics` shows it.
pub struct Meter {
    pub table: &'static str,
    pub pending: Box<dyn Fn() -> usize + Send + Sync>,
    pub dropped: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl<J: Job> Writer<J> {
    /// The queue's figures, readable while the writer runs.
    pub fn meter(&self) -> Meter {
        let (a, b) = (self.shared.clone(), self.shared.clone());
        Meter {
            table: J::TABLE,
            pending: Box::new(move || a.lock().len()),
            dropped: Box::new(move || b.dropped.load(Ordering::Relaxed)),
        }
    }
}

/// Stops a writer if there is one (see [`Writer::stop`]).
pub async fn stop<J: Job>(w: Option<Writer<J>>, deadline: Duration) -> usize {
    match w {
        Some(w) => w.stop(deadline).await,
        None => 0,
    }
}

/// The writer's loop: a round every `period`, and a last one (retried until written) at stop.
async fn run<J: Job>(
    job: Arc<J>,
    shared: Arc<Shared<J::Item>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    period: Duration,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = *stop.borrow();
        if !stopping {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {}
            }
        }
        let stopping = *stop.borrow();
        let ok = round(&*job, &shared).await;
        if stopping {
            if ok && shared.lock().is_empty() {
                return;
            }
            // the database may be busy a moment: try again until the caller's deadline
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One round: take the queued changes, write them; false when some are still pending.
async fn round<J: Job>(job: &J, shared: &Shared<J::Item>) -> bool {
    let batch = {
        let mut q = shared.lock();
        q.extend(job.take());
        shared.bound(J::TABLE, &mut q);
        std::mem::take(&mut *q)
    };
    if batch.is_empty() {
        return true;
    }
    let careful = shared.careful.load(Ordering::Relaxed);
    let mut f = InFlight {
        shared,
        table: J::TABLE,
        batch,
        done: 0,
        suspect: false,
    };
    let mut skipped = 0;
    // after a panic, one item at a time: the one that panics again is dropped
    let step = if careful { 1 } else { f.batch.len() };
    while f.done < f.batch.len() {
        let end = (f.done + step).min(f.batch.len());
        f.suspect = careful;
        let r = job.write(&f.batch[f.done..end]).await;
        f.suspect = false;
        match r {
            Ok(n) => {
                skipped += n;
                f.done = end;
            }
            Err(e) if e.refused && end - f.done == 1 => {
                // refused alone: this change can never be written
                f.done = end;
                skipped += 1;
                tracing::error!(table = J::TABLE, error = %e.message, "the database refused a change: dropped (the others are written)");
            }
            Err(e) if e.refused => {
                // one change of the batch is refused: the next round finds it alone
                shared.careful.store(true, Ordering::Relaxed);
                tracing::warn!(table = J::TABLE, error = %e.message, changes = f.batch.len() - f.done, "the database refused a batch: writing its changes one at a time");
                return false;
            }
            Err(e) => {
                shared.behind.store(true, Ordering::Relaxed);
                job.health()
                    .failed(J::TABLE, &e.message, f.batch.len() - f.done);
                return false;
            }
        }
    }
    let replayed = match shared.behind.swap(false, Ordering::Relaxed) {
        true => f.batch.len(),
        false => 0,
    };
    job.health().written(J::TABLE, replayed);
    if skipped > 0 {
        shared.dropped.fetch_add(skipped as u64, Ordering::Relaxed);
    }
    shared.careful.store(false, Ordering::Relaxed);
    true
}

/// Turns items into rows one at a time, so an item whose conversion panics is dropped
/// (logged, counted in the result) instead of stopping its table.
fn rows_of<I, R>(table: &'static str, items: &[I], f: impl Fn(&I) -> R) -> (Vec<R>, usize) {
    let mut rows = Vec::with_capacity(items.len());
    let mut skipped = 0;
    for it in items {
        match net::supervise::guard(table, || f(it)) {
            Some(r) => rows.push(r),
            None => skipped += 1,
        }
    }
    (rows, skipped)
}

/// The `location` table.
pub struct LocationJob {
    pub reg: Arc<Registrar>,
    pub store: crate::Store,
}

impl Job for LocationJob {
    type Item = LocEvent;
    const TABLE: &'static str = "location";
    fn take(&self) -> Vec<LocEvent> {
        self.reg.take_events()
    }
    async fn write(&self, items: &[LocEvent]) -> Result<usize, WriteFail> {
        let (ops, skipped) = rows_of(Self::TABLE, items, crate::location_rows::location_op);
        self.store.apply_location(&ops).await?;
        Ok(skipped)
    }
}

/// The `dialog` table.
pub struct DialogJob {
    pub dialogs: Arc<Dialogs>,
    pub store: crate::Store,
}

impl Job for DialogJob {
    type Item = DlgEvent;
    const TABLE: &'static str = "dialog";
    fn take(&self) -> Vec<DlgEvent> {
        self.dialogs.take_events()
    }
    async fn write(&self, items: &[DlgEvent]) -> Result<usize, WriteFail> {
        let (now, unix) = (Instant::now(), crate::unix_now());
        let (ops, skipped) = rows_of(Self::TABLE, items, |e| crate::dialog_rows::op(e, now, unix));
        self.store.apply_dialogs(&ops).await?;
        Ok(skipped)
    }
}

/// The `acc` and `missed_calls` tables.
pub struct CdrJob {
    pub cdrs: Arc<Cdrs>,
    pub store: crate::Store,
}

impl Job for CdrJob {
    type Item = CallRecord;
    const TABLE: &'static str = "acc";
    fn take(&self) -> Vec<CallRecord> {
        self.cdrs.take()
    }
    async fn write(&self, items: &[CallRecord]) -> Result<usize, WriteFail> {
        Ok(crate::cdr_rows::write_cdrs(&self.store, items).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table in memory whose writes fail while `fail` is set, and panic on the item 13.
    #[derive(Default)]
    struct Mem {
        queue: Mutex<Vec<u32>>,
        written: Mutex<Vec<u32>>,
        fail: AtomicBool,
    }

    impl Job for Arc<Mem> {
        type Item = u32;
        const TABLE: &'static str = "test";
        fn take(&self) -> Vec<u32> {
            std::mem::take(&mut *self.queue.lock().unwrap())
        }
        async fn write(&self, items: &[u32]) -> Result<usize, WriteFail> {
            if self.fail.load(Ordering::Relaxed) {
                return Err(WriteFail {
                    message: "database is locked".into(),
                    refused: false,
                });
            }
            // the database refuses item 66 (a value too long for its column)
            if items.contains(&66) {
                return Err(WriteFail {
                    message: "value too long for type character varying(32)".into(),
                    refused: true,
                });
            }
            if items.contains(&13) {
                panic!("the writer met item 13");
            }
            self.written.lock().unwrap().extend_from_slice(items);
            Ok(0)
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn stop_writes_everything_queued_also_after_failures() {
        rt().block_on(async {
            let m = Arc::new(Mem::default());
            m.fail.store(true, Ordering::Relaxed);
            let w = Writer::start(m.clone(), Duration::from_millis(200), 1000);
            m.queue.lock().unwrap().extend([1, 2, 3]);
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(w.pending(), 3, "kept while the database fails");
            m.queue.lock().unwrap().extend([4, 5]);
            m.fail.store(false, Ordering::Relaxed);
            // queued just before the stop: written by the last round, in order
            assert_eq!(w.stop(Duration::from_secs(5)).await, 0);
            assert_eq!(*m.written.lock().unwrap(), vec![1, 2, 3, 4, 5]);
        });
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        rt().block_on(async {
            let m = Arc::new(Mem::default());
            m.fail.store(true, Ordering::Relaxed);
            let w = Writer::start(m.clone(), Duration::from_millis(200), 4);
            m.queue.lock().unwrap().extend(1..=10);
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(w.pending(), 4);
            assert_eq!(w.dropped(), 6);
            m.fail.store(false, Ordering::Relaxed);
            assert_eq!(w.stop(Duration::from_secs(5)).await, 0);
            assert_eq!(*m.written.lock().unwrap(), vec![7, 8, 9, 10]);
        });
    }

    #[test]
    fn a_panicking_item_is_dropped_and_the_rest_written() {
        rt().block_on(async {
            let m = Arc::new(Mem::default());
            let w = Writer::start(m.clone(), Duration::from_millis(200), 1000);
            m.queue.lock().unwrap().extend([11, 12, 13, 14]);
            tokio::time::sleep(Duration::from_secs(10)).await;
            m.queue.lock().unwrap().push(15);
            assert_eq!(w.stop(Duration::from_secs(5)).await, 0);
            assert_eq!(*m.written.lock().unwrap(), vec![11, 12, 14, 15]);
            assert!(net::supervise::counts()
                .iter()
                .any(|(t, n)| *t == "test" && *n >= 1));
        });
    }

    #[test]
    fn a_refused_item_is_dropped_and_the_rest_written_in_order() {
        rt().block_on(async {
            let m = Arc::new(Mem::default());
            let w = Writer::start(m.clone(), Duration::from_millis(200), 1000);
            m.queue.lock().unwrap().extend([61, 62, 66, 67]);
            tokio::time::sleep(Duration::from_secs(2)).await;
            m.queue.lock().unwrap().extend([68, 69]);
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(*m.written.lock().unwrap(), vec![61, 62, 67, 68, 69]);
            assert_eq!(w.dropped(), 1);
            assert_eq!(w.pending(), 0);
            assert_eq!(w.stop(Duration::from_secs(5)).await, 0);
        });
    }

    #[test]
    fn stop_gives_up_at_the_deadline_and_says_how_many_are_left() {
        rt().block_on(async {
            let m = Arc::new(Mem::default());
            m.fail.store(true, Ordering::Relaxed);
            let w = Writer::start(m.clone(), Duration::from_millis(200), 1000);
            m.queue.lock().unwrap().extend([1, 2]);
            assert_eq!(w.stop(Duration::from_secs(2)).await, 2);
        });
    }
}
