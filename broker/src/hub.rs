//! This replica's sockets: the one in-process index of live connections.
//!
//! The hub holds only what belongs to sockets connected here; it is rebuilt by clients
//! reconnecting and is never consulted for another replica's state.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

use crate::lifecycle::AfterClose;
use crate::outbound::Outbound;
use crate::protocol::{Priority, Status};

/// A command to one connection's task.
#[derive(Debug)]
pub enum Control {
    /// Queue a close frame, then end the session.
    Close {
        code: u16,
        reason: String,
        after: AfterClose,
    },
    /// A Claude Code hook reported a status for this session.
    HookStatus(Status),
    /// The bus recovered from an outage: re-register the presence and drain the queue.
    /// `owners` maps the mesh's presence ids to their owning connection ids, listed once
    /// per mesh for all its local sessions (`None`: the listing failed, list again).
    Resync {
        owners: Option<std::sync::Arc<HashMap<String, String>>>,
    },
}

/// A frame waiting at a connection's gate, with its priority (`None`: system event).
pub type Gated = (Bytes, Option<Priority>);

/// What the rest of the replica may do with one live connection.
#[derive(Debug)]
pub struct SessionHandle {
    pub conn_id: String,
    pub mesh_id: String,
    pub presence_id: String,
    pub member_id: String,
    pub session_key: Option<String>,
    pub pid: Option<i64>,
    pub cwd: String,
    pub out: Outbound,
    pub control: mpsc::UnboundedSender<Control>,
    /// Rung when queued direct messages may be waiting for this connection.
    pub drain: Notify,
    /// The status gating pushes; the session task is its only writer.
    pub status: Mutex<Status>,
    /// Broadcasts held back while the status is busy, flushed on return to `idle`.
    pub held: Mutex<Held>,
    /// Frames that arrived before the hello_ack was queued (`Some` until then).
    pub gate: Mutex<Option<Vec<Gated>>>,
}

/// Frames held for a busy presence, bounded in bytes (the oldest are dropped first).
#[derive(Debug, Default)]
pub struct Held {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl Held {
    pub fn push(&mut self, frame: Bytes, limit: usize) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
        while self.bytes > limit {
            match self.frames.pop_front() {
                Some(f) => self.bytes -= f.len(),
                None => break,
            }
        }
    }

    pub fn take(&mut self) -> Vec<Bytes> {
        self.bytes = 0;
        self.frames.drain(..).collect()
    }
}

impl SessionHandle {
    pub fn status(&self) -> Status {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets frames through after the hello_ack, first those that waited at the gate.
    pub fn open_gate(&self, held_limit: usize) {
        let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        for (frame, priority) in gate.take().unwrap_or_default() {
            self.push_or_hold(&frame, priority, held_limit);
        }
    }

    /// Pushes a frame now, holds it when the status does not admit its priority, or keeps
    /// it at the gate before the hello_ack.
    fn deliver(&self, frame: &Bytes, priority: Option<Priority>, held_limit: usize) -> bool {
        let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waiting) = gate.as_mut() {
            waiting.push((frame.clone(), priority));
            return true;
        }
        drop(gate);
        self.push_or_hold(frame, priority, held_limit)
    }

    fn push_or_hold(&self, frame: &Bytes, priority: Option<Priority>, held_limit: usize) -> bool {
        if let Some(p) = priority {
            let status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            if !status.admits(p) {
                self.held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(frame.clone(), held_limit);
                return false;
            }
        }
        self.out.text(frame.clone())
    }
}

#[derive(Debug, Default)]
pub struct Hub {
    /// mesh id → connection id → handle.
    meshes: RwLock<HashMap<String, HashMap<String, Arc<SessionHandle>>>>,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a connection; `true` when it is the first of its mesh here (subscribe the mesh).
    pub fn insert(&self, handle: Arc<SessionHandle>) -> bool {
        let mut meshes = self.meshes.write().unwrap_or_else(|p| p.into_inner());
        let mesh = meshes.entry(handle.mesh_id.clone()).or_default();
        let first = mesh.is_empty();
        mesh.insert(handle.conn_id.clone(), handle);
        first
    }

    /// Removes a connection; `true` when it was the last of its mesh here (unsubscribe).
    pub fn remove(&self, mesh_id: &str, conn_id: &str) -> bool {
        let mut meshes = self.meshes.write().unwrap_or_else(|p| p.into_inner());
        let Some(mesh) = meshes.get_mut(mesh_id) else {
            return false;
        };
        mesh.remove(conn_id);
        if mesh.is_empty() {
            meshes.remove(mesh_id);
            return true;
        }
        false
    }

    /// Whether any local connection belongs to the mesh.
    pub fn has_mesh(&self, mesh_id: &str) -> bool {
        let meshes = self.meshes.read().unwrap_or_else(|p| p.into_inner());
        meshes.contains_key(mesh_id)
    }

    /// The meshes with local connections.
    pub fn mesh_ids(&self) -> Vec<String> {
        let meshes = self.meshes.read().unwrap_or_else(|p| p.into_inner());
        meshes.keys().cloned().collect()
    }

    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        let meshes = self.meshes.read().unwrap_or_else(|p| p.into_inner());
        meshes.values().flat_map(|m| m.values().cloned()).collect()
    }

    pub fn len(&self) -> usize {
        let meshes = self.meshes.read().unwrap_or_else(|p| p.into_inner());
        meshes.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The one live local connection a status hook is about: the presence that announced
    /// exactly this `pid` and `cwd`. When several do (one process in several meshes), the
    /// most recently connected one: a hook never fans out over presences.
    pub fn find_by_process(&self, pid: i64, cwd: &str) -> Option<Arc<SessionHandle>> {
        let meshes = self.meshes.read().unwrap_or_else(|p| p.into_inner());
        meshes
            .values()
            .flat_map(|m| m.values())
            .filter(|h| h.pid == Some(pid) && h.cwd == cwd)
            .max_by_key(|h| conn_seq(&h.conn_id))
            .cloned()
    }

    /// The local connection of one presence, if this replica holds it (a status hook
    /// routed here by another replica).
    pub fn find_presence(&self, mesh_id: &str, presence_id: &str) -> Option<Arc<SessionHandle>> {
        let meshes = self.meshes.read().unwrap_or_else(|p| p.into_inner());
        meshes
            .get(mesh_id)?
            .values()
            .filter(|h| h.presence_id == presence_id)
            .max_by_key(|h| conn_seq(&h.conn_id))
            .cloned()
    }

    fn mesh_handles(&self, mesh_id: &str) -> Vec<Arc<SessionHandle>> {
        let meshes = self.meshes.read().unwrap_or_else(|p| p.into_inner());
        meshes
            .get(mesh_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Pushes `frame` to the local connections of these presences (held or gated as their
    /// state says). Returns how many message pushes went out now (system events, with
    /// `priority: None`, are not counted).
    pub fn deliver(
        &self,
        mesh_id: &str,
        presence_ids: &[String],
        priority: Option<Priority>,
        frame: &Bytes,
        held_limit: usize,
    ) -> u64 {
        let wanted: HashSet<&str> = presence_ids.iter().map(String::as_str).collect();
        let mut pushed = 0;
        for h in self
            .mesh_handles(mesh_id)
            .iter()
            .filter(|h| wanted.contains(h.presence_id.as_str()))
        {
            if h.deliver(frame, priority, held_limit) && priority.is_some() {
                pushed += 1;
            }
        }
        pushed
    }

    /// Rings the drain doorbell of the member's local connections.
    pub fn ring(&self, mesh_id: &str, member_id: &str) {
        for h in self
            .mesh_handles(mesh_id)
            .iter()
            .filter(|h| h.member_id == member_id)
        {
            h.drain.notify_one();
        }
    }

    /// Tells these local connections (by connection id) to close.
    pub fn close(
        &self,
        mesh_id: &str,
        conn_ids: &[String],
        code: u16,
        reason: &str,
        after: AfterClose,
    ) {
        for h in self
            .mesh_handles(mesh_id)
            .iter()
            .filter(|h| conn_ids.contains(&h.conn_id))
        {
            let _ = h.control.send(Control::Close {
                code,
                reason: reason.to_string(),
                after,
            });
        }
    }
}

/// The sequence number of a connection id (`<instance id>/<n>`): later connections of
/// this replica have larger ones.
fn conn_seq(conn_id: &str) -> u64 {
    conn_id
        .rsplit_once('/')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_frames_stay_within_their_byte_bound() {
        let mut held = Held::default();
        for i in 0..10u8 {
            held.push(Bytes::from(vec![i; 10]), 35);
        }
        let frames = held.take();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0][0], 7, "the oldest frames are dropped first");
        assert!(held.take().is_empty());
    }
}
