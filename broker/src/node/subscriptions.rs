//! The meshes this replica is subscribed to on the bus.

use std::collections::HashSet;
use std::sync::Arc;

use crate::cluster::bus::Bus;

/// The async lock serialises (un)subscription with the hub's view, so a mesh is subscribed
/// exactly while it has local sockets, however joins and leaves interleave.
pub struct Subscriptions {
    bus: Arc<dyn Bus>,
    meshes: tokio::sync::Mutex<HashSet<String>>,
}

impl Subscriptions {
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Subscriptions {
            bus,
            meshes: tokio::sync::Mutex::new(HashSet::new()),
        }
    }

    /// Subscribes or unsubscribes the mesh so that it matches `want()` (whether local
    /// sockets remain), read under the lock. `before_unsubscribe` runs first when the mesh
    /// is being unsubscribed (without a subscription this replica would miss
    /// invalidations). A bus call that fails leaves the set as it was.
    pub async fn sync(
        &self,
        mesh_id: &str,
        want: impl FnOnce() -> bool,
        before_unsubscribe: impl FnOnce(),
    ) {
        let mut subs = self.meshes.lock().await;
        let want = want();
        if want && !subs.contains(mesh_id) {
            match self.bus.subscribe(mesh_id).await {
                Ok(()) => {
                    subs.insert(mesh_id.to_string());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "mesh subscription failed; retried when the bus recovers")
                }
            }
        } else if !want && subs.contains(mesh_id) {
            before_unsubscribe();
            match self.bus.unsubscribe(mesh_id).await {
                Ok(()) => {
                    subs.remove(mesh_id);
                }
                Err(e) => tracing::warn!(error = %e, "mesh unsubscription failed"),
            }
        }
    }

    /// After the bus reconnected: subscribe every one of `meshes` again (idempotent).
    pub async fn resubscribe_all(&self, meshes: Vec<String>) {
        let mut subs = self.meshes.lock().await;
        subs.clear();
        for mesh_id in meshes {
            match self.bus.subscribe(&mesh_id).await {
                Ok(()) => {
                    subs.insert(mesh_id);
                }
                Err(e) => tracing::warn!(error = %e, "mesh resubscription failed"),
            }
        }
    }
}
