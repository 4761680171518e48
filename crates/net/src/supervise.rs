//! No background work dies silently: a panic in a receive thread, a connection, a writer or a
//! reader task is caught, logged (with the task, the thread and where it happened), counted
//! per task for `/metrics`, and the work goes on: a receive loop takes the next message, a
//! supervised task starts again after a second.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

/// Panics caught so far, per task name.
static CAUGHT: Mutex<Vec<(&'static str, u64)>> = Mutex::new(Vec::new());

/// Counts a caught panic of `task`.
pub fn count(task: &'static str) {
    let mut g = CAUGHT.lock().unwrap_or_else(|p| p.into_inner());
    match g.iter_mut().find(|(t, _)| *t == task) {
        Some((_, n)) => *n += 1,
        None => g.push((task, 1)),
    }
}

/// Caught panics per task, for `/metrics` and `get_statistics`.
pub fn counts() -> Vec<(&'static str, u64)> {
    CAUGHT.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Replaces the default panic message on stderr with a log line naming the thread, the
/// place and the message; whoever catches the panic then says what it restarts.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("?"),
            at = %place,
            message = msg,
            "panic"
        );
    }));
}

/// Runs `f`, catching a panic: `None` when it panicked (logged by the hook, counted here).
pub fn guard<R>(task: &'static str, f: impl FnOnce() -> R) -> Option<R> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(_) => {
            count(task);
            tracing::error!(task, "panic caught: the task goes on");
            None
        }
    }
}

/// A future whose panics are caught: it resolves to `None` when the inner one panicked.
pub struct Catching<F> {
    task: &'static str,
    inner: Pin<Box<F>>,
}

/// Wraps `fut` so that a panic while polling it is caught and counted under `task`.
pub fn catching<F: Future>(task: &'static str, fut: F) -> Catching<F> {
    Catching {
        task,
        inner: Box::pin(fut),
    }
}

impl<F: Future> Future for Catching<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| me.inner.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Some(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => {
                count(me.task);
                tracing::error!(task = me.task, "panic caught: the task ended");
                Poll::Ready(None)
            }
        }
    }
}

/// Spawns a background task on the current runtime that is started again, a second later,
/// whenever it panics; it ends when `make`'s future returns.
pub fn spawn<F, Fut>(task: &'static str, make: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        while catching(task, make()).await.is_none() {
            tracing::warn!(task, "restarting the task in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn guard_catches_and_counts() {
        let before = counts()
            .iter()
            .find(|(t, _)| *t == "test-guard")
            .map_or(0, |c| c.1);
        assert_eq!(guard("test-guard", || 7), Some(7));
        assert_eq!(guard("test-guard", || -> u8 { panic!("boom") }), None);
        let after = counts()
            .iter()
            .find(|(t, _)| *t == "test-guard")
            .map_or(0, |c| c.1);
        assert_eq!(after, before + 1);
    }

    #[test]
    fn a_supervised_task_restarts_after_a_panic() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        rt.block_on(async move {
            spawn("test-restart", move || {
                let r = r.clone();
                async move {
                    if r.fetch_add(1, Ordering::SeqCst) < 2 {
                        panic!("first two runs fail");
                    }
                }
            })
            .await
            .unwrap();
        });
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "two panics, then a clean end"
        );
        assert!(counts().contains(&("test-restart", 2)));
    }
}
