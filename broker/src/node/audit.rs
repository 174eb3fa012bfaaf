//! Audit appends off the caller's path, in batches.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::store::{AuditEvent, Store};

/// What the appender task receives: an event, or a request to say when everything
/// before it is written.
enum Request {
    Append(AuditEvent),
    Flush(oneshot::Sender<()>),
}

/// `AUDIT_BUFFER`, `AUDIT_BATCH_MAX`, `AUDIT_FLUSH_MS`.
#[derive(Debug, Clone, Copy)]
pub struct AuditBounds {
    pub buffer: usize,
    pub batch_max: usize,
    pub linger: Duration,
}

/// The audit counters of one replica.
#[derive(Clone, Default)]
pub struct AuditMetrics {
    /// `broker_audit_write_failures_total`: events whose append failed.
    pub failures: Counter,
    /// `broker_audit_buffered`: events waiting in the buffer.
    pub buffered: Gauge,
    /// `broker_audit_buffer_full_total`: events that found the buffer full and were
    /// appended on a task of their own.
    pub buffer_full: Counter,
}

/// Appends to audit chains off the caller's path. Events wait in one bounded buffer
/// (`AUDIT_BUFFER` events); one task takes them in batches of up to `AUDIT_BATCH_MAX`,
/// waiting at most `AUDIT_FLUSH_MS` after the first event of a batch for more, and
/// appends each batch at once (one lock in memory, one transaction per mesh in
/// PostgreSQL), so a batch grows with the load instead of costing a task and a lock per
/// event. Each event is still its own entry of its mesh's chain, in the order
/// the events were submitted. An event that finds the buffer full is appended on a
/// tracked task of its own (never dropped). A failed write is never silent: it is logged
/// and counted (`broker_audit_write_failures_total`). Shutdown calls [`Self::flush`].
pub struct AuditSpawner {
    store: Arc<dyn Store>,
    tracker: TaskTracker,
    metrics: AuditMetrics,
    tx: mpsc::Sender<Request>,
}

impl AuditSpawner {
    /// Starts the appender task (it ends when the spawner is dropped). Needs a runtime.
    pub fn new(
        store: Arc<dyn Store>,
        tracker: TaskTracker,
        metrics: AuditMetrics,
        bounds: AuditBounds,
    ) -> Self {
        let (tx, rx) = mpsc::channel(bounds.buffer.max(1));
        tokio::spawn(append_loop(store.clone(), rx, bounds, metrics.clone()));
        AuditSpawner {
            store,
            tracker,
            metrics,
            tx,
        }
    }

    pub fn append(
        &self,
        mesh_id: &str,
        event_type: &'static str,
        actor: Option<&str>,
        payload: serde_json::Value,
    ) {
        let event = AuditEvent {
            mesh_id: mesh_id.to_string(),
            event_type,
            actor: actor.map(str::to_string),
            payload,
            created_at: crate::ids::now_ms(),
        };
        self.metrics.buffered.inc();
        let event = match self.tx.try_send(Request::Append(event)) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(Request::Append(e))) => {
                self.metrics.buffer_full.inc();
                e
            }
            Err(mpsc::error::TrySendError::Closed(Request::Append(e))) => e,
            Err(_) => return,
        };
        self.metrics.buffered.dec();
        let (store, metrics) = (self.store.clone(), self.metrics.clone());
        self.tracker.spawn(async move {
            write(&*store, vec![event], &metrics).await;
        });
    }

    /// Waits until every event submitted before this call is written (or failed, and
    /// counted). `drain` calls it once the sessions are done, so a clean stop leaves no
    /// acked send without its `message_sent` entry.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Request::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
        // Events that found the buffer full run on tracked tasks; `drain` waits for those.
    }
}

async fn append_loop(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Request>,
    bounds: AuditBounds,
    metrics: AuditMetrics,
) {
    let batch_max = bounds.batch_max.max(1);
    let mut requests = Vec::with_capacity(batch_max.min(4096));
    while rx.recv_many(&mut requests, batch_max).await > 0 {
        // Linger for more, unless the batch is full or someone waits for a flush.
        let deadline = tokio::time::Instant::now() + bounds.linger;
        let mut seen = 0;
        while !bounds.linger.is_zero() && requests.len() < batch_max {
            if requests[seen..]
                .iter()
                .any(|r| matches!(r, Request::Flush(_)))
            {
                break;
            }
            seen = requests.len();
            let room = batch_max - requests.len();
            let more = rx.recv_many(&mut requests, room);
            match tokio::time::timeout_at(deadline, more).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        let mut events = Vec::with_capacity(requests.len());
        let mut flushed = Vec::new();
        for r in requests.drain(..) {
            match r {
                Request::Append(e) => events.push(e),
                Request::Flush(done) => flushed.push(done),
            }
        }
        if !events.is_empty() {
            metrics.buffered.dec_by(events.len() as i64);
            write(&*store, events, &metrics).await;
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

async fn write(store: &dyn Store, events: Vec<AuditEvent>, metrics: &AuditMetrics) {
    let n = events.len();
    let first = (events[0].mesh_id.clone(), events[0].event_type);
    if let Err(e) = store.append_audit_batch(events).await {
        metrics.failures.inc_by(n as u64);
        tracing::warn!(events = n, mesh_id = %first.0, event_type = first.1, error = %e,
            "audit write failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::{AuditStore, verify_audit};

    fn spawner(store: &Arc<MemoryStore>, bounds: AuditBounds) -> (AuditSpawner, AuditMetrics) {
        let metrics = AuditMetrics::default();
        let store: Arc<dyn Store> = store.clone();
        let s = AuditSpawner::new(store, TaskTracker::new(), metrics.clone(), bounds);
        (s, metrics)
    }

    #[tokio::test]
    async fn batches_keep_submission_order_and_the_chains_verify() {
        let store = Arc::new(MemoryStore::new());
        let bounds = AuditBounds {
            buffer: 1024,
            batch_max: 7,
            linger: Duration::from_millis(2),
        };
        let (audit, metrics) = spawner(&store, bounds);
        for i in 0..500 {
            let mesh = if i % 3 == 0 { "m1" } else { "m2" };
            audit.append(mesh, "message_sent", Some("a"), serde_json::json!({"i": i}));
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        audit.flush().await;
        let mut written = 0;
        for mesh in ["m1", "m2"] {
            let chain = store.audit_entries(mesh).await.expect("entries");
            let verdict = verify_audit(&chain);
            assert!(verdict.valid, "{mesh}: {verdict:?}");
            let order: Vec<i64> = chain
                .iter()
                .map(|e| e.payload["i"].as_i64().expect("i"))
                .collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "{mesh} in order");
            written += chain.len();
        }
        assert_eq!(written, 500);
        assert_eq!(metrics.buffer_full.get(), 0);
        assert_eq!(metrics.buffered.get(), 0);
        assert_eq!(metrics.failures.get(), 0);
    }

    #[tokio::test]
    async fn a_full_buffer_never_drops_and_a_flush_ends_the_linger() {
        let store = Arc::new(MemoryStore::new());
        let bounds = AuditBounds {
            buffer: 1,
            batch_max: 1000,
            linger: Duration::from_secs(3600),
        };
        let (audit, metrics) = spawner(&store, bounds);
        // The appender cannot run before this task yields: one event fits, 99 overflow.
        for i in 0..100 {
            audit.append("m", "message_sent", None, serde_json::json!({"i": i}));
        }
        assert_eq!(metrics.buffer_full.get(), 99);
        audit.tracker.close();
        audit.tracker.wait().await;
        assert_eq!(store.audit_entries("m").await.expect("m").len(), 99);
        // The buffered one waits for its batch (an hour), unless a flush asks for it.
        tokio::time::timeout(Duration::from_secs(10), audit.flush())
            .await
            .expect("a flush does not wait for the linger");
        let chain = store.audit_entries("m").await.expect("m");
        assert_eq!(chain.len(), 100);
        assert!(verify_audit(&chain).valid);
        assert_eq!(metrics.buffered.get(), 0);
    }
}
