//! Background work: every loop a replica runs besides its sockets, behind one contract.
//!
//! A worker is a named async function run by a supervisor ([`Workers::spawn`]):
//!
//! - **Start:** `run` starts each worker once, after the node is built.
//! - **Stop:** a worker watches the node's tokens itself (`stopping` for loops that end
//!   when shutdown begins, `kill` for those that must run until the last socket is gone,
//!   such as the dispatcher and the heartbeat) and returns `Ok(())`. [`Workers::stop`]
//!   then waits for what is left at most its deadline and aborts the rest.
//! - **Restart policy:** a worker that panics or returns an error is restarted after
//!   [`RESTART_BACKOFF`] when its [`Restart`] policy says so and shutdown has not begun.
//! - **Metrics:** `broker_workers_running{worker}` is 1 while it runs,
//!   `broker_worker_restarts_total{worker}` counts its restarts.
//!
//! The workers: [`dispatcher`] (bus events to the hub), [`sweep`] (expired queued
//! messages), [`health`] (backend health gauges), and in cluster mode [`housekeeping`]
//! (heartbeat, reap, expire, heal) and [`resync`] (after a bus recovery or a Redis data
//! loss).

pub mod clock_authority;
pub mod dispatcher;
pub mod health;
pub mod housekeeping;
pub mod resync;
pub mod scheduler;
pub mod sweep;
pub mod watcher;

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

use crate::metrics::{Metrics, WorkerLabel};

/// How long a failed worker waits before it is started again (a worker that fails at once
/// must not spin).
pub const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// What the supervisor does when a worker panics or returns an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Log it and leave the worker stopped.
    Never,
    /// Start it again after [`RESTART_BACKOFF`], unless shutdown has begun.
    OnFailure,
}

/// Why a worker stopped other than by finishing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WorkerError(pub String);

pub type WorkerResult = Result<(), WorkerError>;

/// The supervisor of one replica's workers.
pub struct Workers {
    /// Tracked workers are awaited by the shutdown drain like sessions are.
    tracker: TaskTracker,
    /// Cancelled by [`Workers::stop`]: supervisors restart nothing any more.
    stop: CancellationToken,
    restarts: Family<WorkerLabel, Counter>,
    running: Family<WorkerLabel, Gauge>,
    tasks: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
    /// [`RESTART_BACKOFF`] (shorter in unit tests).
    backoff: Duration,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").finish_non_exhaustive()
    }
}

impl Workers {
    pub fn new(tracker: TaskTracker, metrics: &Metrics) -> Self {
        Workers {
            tracker,
            stop: CancellationToken::new(),
            restarts: metrics.worker_restarts.clone(),
            running: metrics.workers_running.clone(),
            tasks: Mutex::new(Vec::new()),
            backoff: RESTART_BACKOFF,
        }
    }

    #[cfg(test)]
    fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// Starts a worker on the node's task tracker: the shutdown drain waits for it (up to
    /// the shutdown deadline) like it waits for sessions.
    pub fn spawn<F, Fut>(&self, name: &'static str, restart: Restart, f: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = WorkerResult> + Send + 'static,
    {
        let task = self.tracker.spawn(self.supervise(name, restart, f));
        self.keep(name, task);
    }

    /// Starts a worker the drain does not wait for (it runs until the node is killed, e.g.
    /// the dispatcher, which must keep handing events to sockets while they drain).
    pub fn spawn_untracked<F, Fut>(&self, name: &'static str, restart: Restart, f: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = WorkerResult> + Send + 'static,
    {
        let task = tokio::spawn(self.supervise(name, restart, f));
        self.keep(name, task);
    }

    fn keep(&self, name: &'static str, task: JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, task));
    }

    fn supervise<F, Fut>(
        &self,
        name: &'static str,
        restart: Restart,
        mut f: F,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = WorkerResult> + Send + 'static,
    {
        let label = WorkerLabel { worker: name };
        let (stop, backoff, restarts, running) = (
            self.stop.clone(),
            self.backoff,
            self.restarts.get_or_create(&label).clone(),
            self.running.get_or_create(&label).clone(),
        );
        async move {
            loop {
                running.set(1);
                // On a task of its own, so that a panic is caught here.
                let mut run = tokio::spawn(f());
                let outcome = tokio::select! {
                    joined = &mut run => joined,
                    _ = stop.cancelled() => {
                        // `Workers::stop` gave up on it: do not leave it running.
                        run.abort();
                        running.set(0);
                        return;
                    }
                };
                running.set(0);
                let failure = match outcome {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e.to_string(),
                    Err(e) if e.is_panic() => "panicked".to_string(),
                    Err(e) => e.to_string(),
                };
                if restart == Restart::Never || stop.is_cancelled() {
                    error!(worker = name, failure, "worker stopped");
                    return;
                }
                warn!(worker = name, failure, "worker failed; restarting it");
                restarts.inc();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }

    /// Waits for every worker to finish (they watch the node's tokens) at most `deadline`,
    /// then aborts the ones still running and restarts nothing any more.
    pub async fn stop(&self, deadline: Duration) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let until = tokio::time::Instant::now() + deadline;
        for (name, mut task) in tasks {
            if tokio::time::timeout_at(until, &mut task).await.is_err() {
                warn!(
                    worker = name,
                    "worker still running at its stop deadline: aborted"
                );
                self.stop.cancel();
                let _ = task.await;
            }
        }
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn restarts(m: &Metrics, worker: &'static str) -> u64 {
        m.worker_restarts
            .get_or_create(&WorkerLabel { worker })
            .get()
    }

    #[tokio::test]
    async fn a_failed_worker_is_restarted_per_its_policy() {
        let metrics = Metrics::new();
        let workers =
            Workers::new(TaskTracker::new(), &metrics).with_backoff(Duration::from_millis(10));
        let runs = Arc::new(AtomicU32::new(0));
        {
            let runs = runs.clone();
            workers.spawn("flaky", Restart::OnFailure, move || {
                let n = runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0 => panic!("first run panics"),
                        1 => Err(WorkerError("second run fails".into())),
                        _ => Ok(()),
                    }
                }
            });
        }
        let never = Arc::new(AtomicU32::new(0));
        {
            let never = never.clone();
            workers.spawn("fragile", Restart::Never, move || {
                never.fetch_add(1, Ordering::SeqCst);
                async { Err(WorkerError("fails once".into())) }
            });
        }
        workers.stop(Duration::from_secs(10)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "restarted after a panic and an error"
        );
        assert_eq!(restarts(&metrics, "flaky"), 2);
        assert_eq!(
            never.load(Ordering::SeqCst),
            1,
            "Restart::Never is not restarted"
        );
        assert_eq!(restarts(&metrics, "fragile"), 0);
        let running = |worker| {
            metrics
                .workers_running
                .get_or_create(&WorkerLabel { worker })
                .get()
        };
        assert_eq!((running("flaky"), running("fragile")), (0, 0));
    }

    #[tokio::test]
    async fn a_worker_that_ignores_shutdown_is_aborted_at_the_deadline() {
        let metrics = Metrics::new();
        let workers =
            Workers::new(TaskTracker::new(), &metrics).with_backoff(Duration::from_millis(10));
        let dropped = Arc::new(AtomicU32::new(0));
        struct OnDrop(Arc<AtomicU32>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        {
            let dropped = dropped.clone();
            workers.spawn_untracked("stuck", Restart::OnFailure, move || {
                let guard = OnDrop(dropped.clone());
                async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Ok(())
                }
            });
        }
        tokio::task::yield_now().await;
        assert_eq!(
            metrics
                .workers_running
                .get_or_create(&WorkerLabel { worker: "stuck" })
                .get(),
            1
        );
        workers.stop(Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "aborted, not left running"
        );
        assert_eq!(restarts(&metrics, "stuck"), 0);
    }
}
