//! This replica's sockets: the one in-process index of live connections.
//!
//! The hub holds only what belongs to sockets connected here; it is rebuilt by clients
//! reconnecting and is never consulted for another replica's state.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::Notify;

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

/// One connection's queue of [`Control`] commands. They are rare (a close, a hook status,
/// a re-sync), so it is a `VecDeque` behind a mutex, allocated only while a command waits, and
/// a `Notify`, instead of a channel that would hold a block for the connection's life.
#[derive(Debug, Default)]
pub struct ControlQueue {
    inner: Mutex<ControlInner>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct ControlInner {
    /// In arrival order; empty and unallocated while nothing waits.
    queued: VecDeque<Control>,
    /// The session task no longer reads: [`ControlQueue::send`] refuses.
    closed: bool,
}

impl ControlQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, ControlInner> {
        // Plain data: a panic while it was held cannot leave it inconsistent.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `cmd` for the session task; hands it back when the task no longer reads.
    pub fn send(&self, cmd: Control) -> Result<(), Control> {
        {
            let mut q = self.lock();
            if q.closed {
                return Err(cmd);
            }
            q.queued.push_back(cmd);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// The next command, waiting for one (the session task is the only reader).
    pub async fn recv(&self) -> Control {
        loop {
            if let Some(cmd) = self.try_recv() {
                return cmd;
            }
            self.ready.notified().await;
        }
    }

    fn try_recv(&self) -> Option<Control> {
        let mut q = self.lock();
        let cmd = q.queued.pop_front();
        if q.queued.is_empty() && q.queued.capacity() > 0 {
            q.queued = VecDeque::new();
        }
        cmd
    }

    /// The reader is gone: later sends are refused and what waits is dropped.
    pub fn close(&self) {
        let rest = {
            let mut q = self.lock();
            q.closed = true;
            std::mem::take(&mut q.queued)
        };
        drop(rest);
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
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
    pub control: ControlQueue,
    /// Rung when queued direct messages may be waiting for this connection.
    pub drain: Notify,
    /// The status gating pushes; the session task is its only writer.
    pub status: Mutex<Status>,
    /// Broadcasts held back while the status is busy, flushed on return to `idle`.
    pub held: Mutex<Held>,
    /// Frames that arrived before the hello_ack was queued (`Some` until then).
    pub gate: Mutex<Option<Vec<Gated>>>,
    /// Committed direct messages handed over by a doorbell, for the session task to push
    /// without a claim.
    pub direct: Direct,
}

/// A committed direct message a doorbell carried ([`Hub::direct`]): the session task
/// pushes it as its drain would have, without the claim.
#[derive(Debug, Clone)]
pub struct DirectPush {
    /// The broker's message id.
    pub id: String,
    /// The session key it is addressed to (`None`: any connection of the member).
    pub session_key: Option<String>,
    pub priority: Priority,
    /// The sender's `client_message_id` (a `client_ack` by client id names it).
    pub client_id: Option<String>,
    /// The send's trace context (the queued row's).
    pub trace: Option<String>,
    /// When it was queued (ms epoch), for `broker_delivery_seconds`.
    pub created_at: i64,
    /// The encoded `push`, the one `Push::from_queued` gives for the queued row.
    pub frame: Bytes,
}

/// A connection's mailbox of [`DirectPush`]es, bounded in bytes; its `ready` rings the
/// session task.
#[derive(Debug, Default)]
pub struct Direct {
    mailbox: Mutex<(Vec<DirectPush>, usize)>,
    pub ready: Notify,
}

impl Direct {
    /// Adds a push; `false` (nothing added) when it would take the mailbox over `limit`
    /// bytes (the session is not keeping up: its claim will find the message instead).
    pub fn offer(&self, push: DirectPush, limit: usize) -> bool {
        let mut mailbox = self.mailbox.lock().unwrap_or_else(|p| p.into_inner());
        if !mailbox.0.is_empty() && mailbox.1 + push.frame.len() > limit {
            return false;
        }
        mailbox.1 += push.frame.len();
        mailbox.0.push(push);
        drop(mailbox);
        self.ready.notify_one();
        true
    }

    /// Everything offered so far, in order.
    pub fn take(&self) -> Vec<DirectPush> {
        let mut mailbox = self.mailbox.lock().unwrap_or_else(|p| p.into_inner());
        mailbox.1 = 0;
        std::mem::take(&mut mailbox.0)
    }
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

/// One mesh's local connections, indexed by connection, member and presence id.
#[derive(Debug, Default)]
struct MeshConns {
    conns: HashMap<String, Arc<SessionHandle>>,
    by_member: HashMap<String, Vec<Arc<SessionHandle>>>,
    by_presence: HashMap<String, Vec<Arc<SessionHandle>>>,
}

impl MeshConns {
    fn insert(&mut self, handle: Arc<SessionHandle>) {
        if let Some(old) = self.conns.insert(handle.conn_id.clone(), handle.clone()) {
            self.unindex(&old);
        }
        self.by_member
            .entry(handle.member_id.clone())
            .or_default()
            .push(handle.clone());
        self.by_presence
            .entry(handle.presence_id.clone())
            .or_default()
            .push(handle);
    }

    fn remove(&mut self, conn_id: &str) {
        if let Some(old) = self.conns.remove(conn_id) {
            self.unindex(&old);
        }
    }

    fn unindex(&mut self, old: &Arc<SessionHandle>) {
        for (index, key) in [
            (&mut self.by_member, &old.member_id),
            (&mut self.by_presence, &old.presence_id),
        ] {
            if let Some(list) = index.get_mut(key) {
                list.retain(|h| !Arc::ptr_eq(h, old));
                if list.is_empty() {
                    index.remove(key);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Hub {
    /// mesh id → its connections here.
    meshes: RwLock<HashMap<String, MeshConns>>,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a connection; `true` when it is the first of its mesh here (subscribe the mesh).
    pub fn insert(&self, handle: Arc<SessionHandle>) -> bool {
        let mut meshes = self.meshes.write().unwrap_or_else(|p| p.into_inner());
        let mesh = meshes.entry(handle.mesh_id.clone()).or_default();
        let first = mesh.conns.is_empty();
        mesh.insert(handle);
        first
    }

    /// Removes a connection; `true` when it was the last of its mesh here (unsubscribe).
    pub fn remove(&self, mesh_id: &str, conn_id: &str) -> bool {
        let mut meshes = self.meshes.write().unwrap_or_else(|p| p.into_inner());
        let Some(mesh) = meshes.get_mut(mesh_id) else {
            return false;
        };
        mesh.remove(conn_id);
        if mesh.conns.is_empty() {
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
        meshes
            .values()
            .flat_map(|m| m.conns.values().cloned())
            .collect()
    }

    pub fn len(&self) -> usize {
        let meshes = self.meshes.read().unwrap_or_else(|p| p.into_inner());
        meshes.values().map(|m| m.conns.len()).sum()
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
            .flat_map(|m| m.conns.values())
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
            .by_presence
            .get(presence_id)?
            .iter()
            .max_by_key(|h| conn_seq(&h.conn_id))
            .cloned()
    }

    /// The local connections of these presences, looked up by presence id (or, when more
    /// presences are addressed than the mesh has connections here, by one pass over them).
    fn presence_handles(&self, mesh_id: &str, presence_ids: &[String]) -> Vec<Arc<SessionHandle>> {
        let meshes = self.meshes.read().unwrap_or_else(|p| p.into_inner());
        let Some(mesh) = meshes.get(mesh_id) else {
            return Vec::new();
        };
        if presence_ids.len() > mesh.conns.len() {
            let wanted: HashSet<&str> = presence_ids.iter().map(String::as_str).collect();
            return mesh
                .conns
                .values()
                .filter(|h| wanted.contains(h.presence_id.as_str()))
                .cloned()
                .collect();
        }
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for id in presence_ids {
            if seen.insert(id.as_str())
                && let Some(list) = mesh.by_presence.get(id)
            {
                out.extend(list.iter().cloned());
            }
        }
        out
    }

    /// The member's local connections.
    fn member_handles(&self, mesh_id: &str, member_id: &str) -> Vec<Arc<SessionHandle>> {
        let meshes = self.meshes.read().unwrap_or_else(|p| p.into_inner());
        meshes
            .get(mesh_id)
            .and_then(|m| m.by_member.get(member_id))
            .cloned()
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
        let mut pushed = 0;
        for h in self.presence_handles(mesh_id, presence_ids) {
            if h.deliver(frame, priority, held_limit) && priority.is_some() {
                pushed += 1;
            }
        }
        pushed
    }

    /// Rings the drain doorbell of the member's local connections.
    pub fn ring(&self, mesh_id: &str, member_id: &str) {
        for h in self.member_handles(mesh_id, member_id) {
            h.drain.notify_one();
        }
    }

    /// Hands a committed direct message to one local connection of its recipient that may
    /// take it (its session key, if the message names one), preferring one whose status
    /// admits its priority, then the most recent: that session pushes it without a claim.
    /// When that connection's mailbox is full, its drain is rung instead (the claim finds
    /// the message). `false`: no local connection may take it (it waits in the queue).
    pub fn direct(&self, mesh_id: &str, member_id: &str, push: DirectPush, limit: usize) -> bool {
        let handles = self.member_handles(mesh_id, member_id);
        let chosen = handles
            .iter()
            .filter(|h| {
                push.session_key
                    .as_deref()
                    .is_none_or(|k| h.session_key.as_deref() == Some(k))
            })
            .max_by_key(|h| (h.status().admits(push.priority), conn_seq(&h.conn_id)));
        let Some(h) = chosen else {
            return false;
        };
        if !h.direct.offer(push, limit) {
            h.drain.notify_one();
        }
        true
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
        let handles: Vec<Arc<SessionHandle>> = {
            let meshes = self.meshes.read().unwrap_or_else(|p| p.into_inner());
            let Some(mesh) = meshes.get(mesh_id) else {
                return;
            };
            conn_ids
                .iter()
                .filter_map(|c| mesh.conns.get(c).cloned())
                .collect()
        };
        for h in handles {
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

    fn handle(conn: &str, member: &str, presence: &str, key: Option<&str>) -> Arc<SessionHandle> {
        let (out, rx) = Outbound::new(
            1 << 20,
            Default::default(),
            Default::default(),
            Default::default(),
        );
        std::mem::forget(rx);
        let control = ControlQueue::default();
        Arc::new(SessionHandle {
            conn_id: conn.into(),
            mesh_id: "m".into(),
            presence_id: presence.into(),
            member_id: member.into(),
            session_key: key.map(str::to_string),
            pid: None,
            cwd: String::new(),
            out,
            control,
            drain: Notify::new(),
            status: Mutex::new(Status::Idle),
            held: Mutex::new(Held::default()),
            gate: Mutex::new(None),
            direct: Direct::default(),
        })
    }

    #[tokio::test]
    async fn control_commands_arrive_in_order_and_are_refused_once_closed() {
        let q = Arc::new(ControlQueue::default());
        let reader = tokio::spawn({
            let q = q.clone();
            async move {
                let mut got = Vec::new();
                for _ in 0..3 {
                    got.push(q.recv().await);
                }
                got
            }
        });
        for code in [4001u16, 4002, 4003] {
            let close = Control::Close {
                code,
                reason: String::new(),
                after: AfterClose::Grace,
            };
            assert!(q.send(close).is_ok());
            tokio::task::yield_now().await;
        }
        let codes: Vec<u16> = reader
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| match c {
                Control::Close { code, .. } => Some(code),
                _ => None,
            })
            .collect();
        assert_eq!(codes, [4001, 4002, 4003]);
        // Drained: nothing is held while no command waits.
        assert_eq!(q.lock().queued.capacity(), 0);
        q.close();
        assert!(q.is_closed());
        assert!(q.send(Control::HookStatus(Status::Idle)).is_err());
    }

    fn push(id: &str, key: Option<&str>) -> DirectPush {
        DirectPush {
            id: id.into(),
            session_key: key.map(str::to_string),
            priority: Priority::Next,
            client_id: None,
            trace: None,
            created_at: 0,
            frame: Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn the_index_finds_connections_by_presence_and_member_and_forgets_removed_ones() {
        let hub = Hub::new();
        assert!(hub.insert(handle("n/1", "u1", "p1", None)));
        assert!(!hub.insert(handle("n/2", "u1", "p2", Some("k2"))));
        assert!(!hub.insert(handle("n/3", "u2", "p3", None)));
        let frame = Bytes::from_static(b"x");
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            hub.deliver(
                "m",
                &ids(&["p1", "p3", "p9"]),
                Some(Priority::Now),
                &frame,
                1
            ),
            2
        );
        // More presences addressed than connected here: one pass over the mesh.
        assert_eq!(
            hub.deliver(
                "m",
                &ids(&["p1", "p2", "p3", "p8", "p9"]),
                Some(Priority::Now),
                &frame,
                1
            ),
            3
        );
        assert_eq!(
            hub.deliver("m", &ids(&["p1", "p1"]), Some(Priority::Now), &frame, 1),
            1
        );
        assert_eq!(
            hub.deliver("other", &ids(&["p1"]), Some(Priority::Now), &frame, 1),
            0
        );
        assert_eq!(
            hub.find_presence("m", "p2").map(|h| h.conn_id.clone()),
            Some("n/2".into())
        );

        // A member-addressed message goes to one connection (the latest), a session-keyed
        // one only to that session, and one for nobody here to none.
        assert!(hub.direct("m", "u1", push("a", None), 1 << 20));
        assert!(hub.direct("m", "u1", push("b", Some("k2")), 1 << 20));
        assert!(!hub.direct("m", "u1", push("c", Some("k9")), 1 << 20));
        assert!(!hub.direct("m", "u9", push("d", None), 1 << 20));
        let find = |c: &str| hub.all().into_iter().find(|h| h.conn_id == c).unwrap();
        let taken: Vec<String> = find("n/2")
            .direct
            .take()
            .into_iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(taken, ["a", "b"]);
        assert!(find("n/1").direct.take().is_empty());
        // A full mailbox refuses (the caller rings the drain instead).
        assert!(find("n/1").direct.offer(push("e", None), 1));
        assert!(!find("n/1").direct.offer(push("f", None), 1));

        assert!(!hub.remove("m", "n/2"));
        assert_eq!(
            hub.deliver("m", &ids(&["p2"]), Some(Priority::Now), &frame, 1),
            0
        );
        assert!(!hub.direct("m", "u1", push("g", Some("k2")), 1 << 20));
        assert!(!hub.remove("m", "n/1"));
        assert!(hub.remove("m", "n/3"));
        assert!(!hub.has_mesh("m"));
        assert!(hub.is_empty());
    }

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
