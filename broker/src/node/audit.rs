//! Audit appends off the caller's path.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use tokio_util::task::TaskTracker;

use crate::store::Store;

/// Appends to audit chains on tracked tasks (so shutdown waits for them). A failed write
/// is never silent: it is logged and counted (`broker_audit_write_failures_total`).
pub struct AuditSpawner {
    store: Arc<dyn Store>,
    tracker: TaskTracker,
    failures: Counter,
}

impl AuditSpawner {
    pub fn new(store: Arc<dyn Store>, tracker: TaskTracker, failures: Counter) -> Self {
        AuditSpawner {
            store,
            tracker,
            failures,
        }
    }

    pub fn append(
        &self,
        mesh_id: &str,
        event_type: &'static str,
        actor: Option<&str>,
        payload: serde_json::Value,
    ) {
        let (store, failures) = (self.store.clone(), self.failures.clone());
        let (mesh_id, actor) = (mesh_id.to_string(), actor.map(str::to_string));
        self.tracker.spawn(async move {
            let at = crate::ids::now_ms();
            if let Err(e) = store
                .append_audit(&mesh_id, event_type, actor.as_deref(), payload, at)
                .await
            {
                failures.inc();
                tracing::warn!(mesh_id = %mesh_id, event_type, error = %e, "audit write failed");
            }
        });
    }
}
