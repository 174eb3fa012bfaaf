//! Fan-out between replicas.
//!
//! # Semantics every backend gives
//!
//! - **Scope:** [`Bus::publish`] reaches every replica that has called [`Bus::subscribe`] for
//!   the mesh (including the publisher), which hands the event to its hub.
//! - **At-most-once:** an event can be lost (a Redis reconnect, a replica restart). Nothing
//!   that was acknowledged to a client may depend on an event arriving: direct messages are
//!   in the [`crate::store::Store`] first, and a [`MeshEvent::Doorbell`] only says "drain now".
//!   Replicas re-drain their sessions after any reconnect of the bus.
//! - **Order:** events published by one replica on one mesh arrive in publish order.
//! - **Encoding once:** a [`MeshEvent::Deliver`] carries the already-encoded frame as shared
//!   [`Bytes`]; every receiving socket writes the same buffer.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::protocol::Priority;

/// What to do with a presence after its socket is closed by a [`MeshEvent::Close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterClose {
    /// The presence enters lease grace (the client is expected back).
    Grace,
    /// The presence ends now, with `peer_left` (kick, ban).
    End,
}

/// An event for the replicas that hold sockets of one mesh.
#[derive(Debug, Clone)]
pub enum MeshEvent {
    /// Push `frame` to these presences if connected here. `priority: None` is a system event
    /// and is never held back by a busy status.
    Deliver {
        presence_ids: Arc<[String]>,
        priority: Option<Priority>,
        frame: Bytes,
    },
    /// Queued direct messages are waiting for this member: drain its connections.
    Doorbell { member_id: String },
    /// The mesh's members changed (enrolment, grants, ban): drop cached member rows.
    MembersChanged,
    /// Close these connections (by connection id, so a reattached presence is not hit).
    Close {
        conn_ids: Vec<String>,
        code: u16,
        reason: String,
        after: AfterClose,
    },
}

impl MeshEvent {
    /// A short name for logs and spans.
    pub fn kind(&self) -> &'static str {
        match self {
            MeshEvent::Deliver { .. } => "deliver",
            MeshEvent::Doorbell { .. } => "doorbell",
            MeshEvent::Close { .. } => "close",
            MeshEvent::MembersChanged => "members_changed",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("bus unavailable: {0}")]
pub struct BusError(pub String);

/// Where a replica's bus hands the events it receives.
pub type BusSink = mpsc::UnboundedSender<(String, MeshEvent)>;

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    async fn publish(&self, mesh_id: &str, event: MeshEvent) -> Result<(), BusError>;
    /// Starts receiving the mesh's events (the first local socket of the mesh arrived).
    async fn subscribe(&self, mesh_id: &str) -> Result<(), BusError>;
    /// Stops receiving them (the last local socket of the mesh left).
    async fn unsubscribe(&self, mesh_id: &str) -> Result<(), BusError>;
    /// Whether publish/subscribe works end to end now (readiness).
    async fn healthy(&self) -> bool;
    /// Ticks each time the bus recovered from an outage: events may have been lost, so
    /// the replica re-syncs (resubscribes, re-registers presences, re-drains sessions).
    fn reconnects(&self) -> watch::Receiver<u64>;
}

/// In-process bus: single node only. A publish is handed straight to this replica's hub,
/// in publish order, and cannot be lost while the process runs.
#[derive(Debug)]
pub struct MemoryBus {
    sink: BusSink,
    subscribed: Mutex<HashSet<String>>,
    /// Never ticks: an in-process bus has no outages.
    reconnects: watch::Sender<u64>,
}

impl MemoryBus {
    pub fn new(sink: BusSink) -> Self {
        Self {
            sink,
            subscribed: Mutex::new(HashSet::new()),
            reconnects: watch::Sender::new(0),
        }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, mesh_id: &str, event: MeshEvent) -> Result<(), BusError> {
        let subscribed = self
            .subscribed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(mesh_id);
        if subscribed {
            self.sink
                .send((mesh_id.to_string(), event))
                .map_err(|_| BusError("hub has stopped".into()))?;
        }
        Ok(())
    }

    async fn subscribe(&self, mesh_id: &str) -> Result<(), BusError> {
        self.subscribed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(mesh_id.to_string());
        Ok(())
    }

    async fn unsubscribe(&self, mesh_id: &str) -> Result<(), BusError> {
        self.subscribed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(mesh_id);
        Ok(())
    }

    async fn healthy(&self) -> bool {
        !self.sink.is_closed()
    }

    fn reconnects(&self) -> watch::Receiver<u64> {
        self.reconnects.subscribe()
    }
}
