//! The peer-hosted MCP registry (extensions §14) and the table of pending peer requests
//! (relayed file and directory reads, §13, and MCP calls, §14), in the registry every
//! replica shares.
//!
//! # Semantics every backend gives
//!
//! - **Registrations** are keyed by (mesh, server name). Writes are compare-and-set
//!   ([`McpRegistry::swap`]): a write names the value it expects to replace, so two replicas
//!   racing on one name cannot both win, and the per-mesh bound is checked in the same
//!   atomic step. The rules (who may replace, what a host's departure does) are the
//!   service's (`service::mcp_registry`); this seam only stores.
//! - **Pending requests** are bound to their requester presence and their target presence.
//!   [`McpRegistry::open`] checks the requester's bound and opens in one step;
//!   [`McpRegistry::take`] removes and returns an entry atomically, so exactly one of the
//!   answer, the timeout and the target's departure resolves a request. An entry expires on
//!   its own after its deadline (Redis `PX`), so a replica that dies with timers running
//!   leaves nothing behind for long.
//! - **Ephemeral:** live state, like presence: nothing here survives a restart of the
//!   backend (a Redis data loss drops every registration; hosts register again).
//!
//! [`MemoryMcpRegistry`] is single node only; [`RedisMcpRegistry`] keeps `P:mcp:{mesh}` (a
//! hash: server name → registration JSON), `P:pend:{mesh}:{id}` (one pending request, with
//! a TTL) and the indexes `P:pendby:{mesh}:{requester}` and `P:pendto:{mesh}:{target}`
//! (sorted sets: id → deadline), changed together by Lua scripts (`lua/mcp_swap.lua`,
//! `lua/pending_*.lua`); with Redis Cluster the same names after the mesh's hash tag,
//! `{P:m:{mesh}}:mcp`, `{P:m:{mesh}}:pend:{id}`, … (one slot per mesh, see
//! `redis_conn::Keys`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use redis::Script;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::redis_conn::{Keys, RedisConn};

#[derive(Debug, Clone, thiserror::Error)]
#[error("peer registry unavailable: {0}")]
pub struct RegistryError(pub String);

pub type RegistryResult<T> = Result<T, RegistryError>;

/// One tool of a registered server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}

/// One registered server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub server_name: String,
    pub description: String,
    pub tools: Vec<Tool>,
    pub persistent: bool,
    /// The member that registered it: only it may replace or unregister it.
    pub host_member_id: String,
    /// The presence calls are forwarded to.
    pub host_presence_id: String,
    /// The host presence's display name.
    pub hosted_by: String,
    /// `false` for a persistent entry whose host went away.
    pub online: bool,
    /// When the host went away (ms epoch), for an offline entry.
    pub offline_since: Option<i64>,
    pub registered_at: i64,
}

/// What a pending request is, which decides the frame that answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingKind {
    /// `peer_file_request` (§13).
    File,
    /// `peer_dir_request` (§13).
    Dir,
    /// `mcp_call` (§14).
    McpCall,
}

/// One request forwarded to a peer and not answered yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// The broker's id (the relay's forward `_reqId`, the call's `callId`).
    pub id: String,
    pub kind: PendingKind,
    /// Who asked: the answer goes to this presence only.
    pub requester_presence_id: String,
    /// Who was asked: only an answer from this presence counts.
    pub target_presence_id: String,
    /// The requester's `_reqId`, echoed on the answer.
    pub req_id: Option<String>,
    /// The file or directory path (relay), the server name (MCP).
    pub subject: String,
    /// When it times out (ms epoch).
    pub deadline_ms: i64,
}

/// What [`McpRegistry::swap`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    Done,
    /// The current value is not the expected one: nothing changed (read again).
    Conflict,
    /// A new name in a mesh holding the most registrations it may: nothing changed.
    Full,
}

#[async_trait]
pub trait McpRegistry: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    /// The mesh's registrations, by server name.
    async fn servers(&self, mesh_id: &str) -> RegistryResult<Vec<Registration>>;
    async fn server(&self, mesh_id: &str, name: &str) -> RegistryResult<Option<Registration>>;
    /// Replaces the registration `name` by `new` (`None`: deletes it) if it is `expected`
    /// (`None`: absent); a new name is refused when the mesh holds `max_servers` (`0`: no
    /// bound).
    async fn swap(
        &self,
        mesh_id: &str,
        name: &str,
        expected: Option<&Registration>,
        new: Option<&Registration>,
        max_servers: usize,
    ) -> RegistryResult<Swap>;
    /// Opens `pending` unless its requester has `max_per_requester` open (`0`: no bound);
    /// `false` when refused.
    async fn open(
        &self,
        mesh_id: &str,
        pending: &Pending,
        max_per_requester: usize,
        now_ms: i64,
    ) -> RegistryResult<bool>;
    /// Removes and returns the pending request `id`, if open and (when `from_target` is
    /// given) sent to that presence.
    async fn take(
        &self,
        mesh_id: &str,
        id: &str,
        from_target: Option<&str>,
    ) -> RegistryResult<Option<Pending>>;
    /// Whether `id` is still open.
    async fn is_open(&self, mesh_id: &str, id: &str) -> RegistryResult<bool>;
    /// The ids of the open requests sent to `target_presence_id`.
    async fn open_to(
        &self,
        mesh_id: &str,
        target_presence_id: &str,
        now_ms: i64,
    ) -> RegistryResult<Vec<String>>;
}

/// In-process registry: single node only.
#[derive(Debug, Default)]
pub struct MemoryMcpRegistry {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// mesh → server name → registration.
    servers: HashMap<String, BTreeMap<String, Registration>>,
    /// (mesh, id) → pending request.
    pending: HashMap<(String, String), Pending>,
}

impl MemoryMcpRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl McpRegistry for MemoryMcpRegistry {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn servers(&self, mesh_id: &str) -> RegistryResult<Vec<Registration>> {
        Ok(self
            .lock()
            .servers
            .get(mesh_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn server(&self, mesh_id: &str, name: &str) -> RegistryResult<Option<Registration>> {
        Ok(self
            .lock()
            .servers
            .get(mesh_id)
            .and_then(|m| m.get(name))
            .cloned())
    }

    async fn swap(
        &self,
        mesh_id: &str,
        name: &str,
        expected: Option<&Registration>,
        new: Option<&Registration>,
        max_servers: usize,
    ) -> RegistryResult<Swap> {
        let mut inner = self.lock();
        let mesh = inner.servers.entry(mesh_id.to_string()).or_default();
        if mesh.get(name) != expected {
            return Ok(Swap::Conflict);
        }
        match new {
            None => {
                mesh.remove(name);
            }
            Some(r) => {
                if expected.is_none() && max_servers > 0 && mesh.len() >= max_servers {
                    return Ok(Swap::Full);
                }
                mesh.insert(name.to_string(), r.clone());
            }
        }
        if mesh.is_empty() {
            inner.servers.remove(mesh_id);
        }
        Ok(Swap::Done)
    }

    async fn open(
        &self,
        mesh_id: &str,
        pending: &Pending,
        max_per_requester: usize,
        now_ms: i64,
    ) -> RegistryResult<bool> {
        let mut inner = self.lock();
        // Entries past their deadline do not count; they are dropped once well past it
        // (their timer normally takes them at the deadline), so they do not accumulate.
        inner
            .pending
            .retain(|_, p| p.deadline_ms + PENDING_TTL_MARGIN_MS > now_ms);
        let open = inner
            .pending
            .iter()
            .filter(|((m, _), p)| {
                m == mesh_id
                    && p.requester_presence_id == pending.requester_presence_id
                    && p.deadline_ms > now_ms
            })
            .count();
        if max_per_requester > 0 && open >= max_per_requester {
            return Ok(false);
        }
        inner
            .pending
            .insert((mesh_id.to_string(), pending.id.clone()), pending.clone());
        Ok(true)
    }

    async fn take(
        &self,
        mesh_id: &str,
        id: &str,
        from_target: Option<&str>,
    ) -> RegistryResult<Option<Pending>> {
        let mut inner = self.lock();
        let key = (mesh_id.to_string(), id.to_string());
        match inner.pending.get(&key) {
            Some(p) if from_target.is_none_or(|t| t == p.target_presence_id) => {
                Ok(inner.pending.remove(&key))
            }
            _ => Ok(None),
        }
    }

    async fn is_open(&self, mesh_id: &str, id: &str) -> RegistryResult<bool> {
        Ok(self
            .lock()
            .pending
            .contains_key(&(mesh_id.to_string(), id.to_string())))
    }

    async fn open_to(
        &self,
        mesh_id: &str,
        target_presence_id: &str,
        now_ms: i64,
    ) -> RegistryResult<Vec<String>> {
        let inner = self.lock();
        let mut ids: Vec<String> = inner
            .pending
            .iter()
            .filter(|((m, _), p)| {
                m == mesh_id && p.target_presence_id == target_presence_id && p.deadline_ms > now_ms
            })
            .map(|((_, id), _)| id.clone())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

/// The registry in Redis, shared by every replica.
pub struct RedisMcpRegistry {
    conn: RedisConn,
    keys: Keys,
    swap: Script,
    open: Script,
    take: Script,
}

impl std::fmt::Debug for RedisMcpRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMcpRegistry")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

fn err(e: impl std::fmt::Display) -> RegistryError {
    RegistryError(e.to_string())
}

/// Extra lifetime of a pending entry past its deadline, so the timer that takes it at the
/// deadline still finds it.
const PENDING_TTL_MARGIN_MS: i64 = 5_000;

impl RedisMcpRegistry {
    /// With one Redis or Redis Cluster: the key layout follows the connection.
    pub fn new(conn: impl Into<RedisConn>, prefix: &str) -> Self {
        let conn = conn.into();
        let keys = Keys::new(prefix, conn.is_cluster());
        RedisMcpRegistry {
            conn,
            keys,
            swap: Script::new(include_str!("lua/mcp_swap.lua")),
            open: Script::new(include_str!("lua/pending_open.lua")),
            take: Script::new(include_str!("lua/pending_take.lua")),
        }
    }

    fn servers_key(&self, mesh_id: &str) -> String {
        self.keys.mesh("mcp", mesh_id, "")
    }

    fn pending_key(&self, mesh_id: &str, id: &str) -> String {
        self.keys.mesh("pend", mesh_id, id)
    }

    fn by_prefix(&self, mesh_id: &str) -> String {
        format!("{}:", self.keys.mesh("pendby", mesh_id, ""))
    }

    fn to_prefix(&self, mesh_id: &str) -> String {
        format!("{}:", self.keys.mesh("pendto", mesh_id, ""))
    }
}

fn encode<T: Serialize>(v: &T) -> RegistryResult<String> {
    serde_json::to_string(v).map_err(err)
}

#[async_trait]
impl McpRegistry for RedisMcpRegistry {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn servers(&self, mesh_id: &str) -> RegistryResult<Vec<Registration>> {
        let mut c = self.conn.clone();
        let all: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.servers_key(mesh_id))
            .query_async(&mut c)
            .await
            .map_err(err)?;
        all.values()
            .map(|v| serde_json::from_str(v).map_err(err))
            .collect()
    }

    async fn server(&self, mesh_id: &str, name: &str) -> RegistryResult<Option<Registration>> {
        let mut c = self.conn.clone();
        let v: Option<String> = redis::cmd("HGET")
            .arg(self.servers_key(mesh_id))
            .arg(name)
            .query_async(&mut c)
            .await
            .map_err(err)?;
        v.map(|v| serde_json::from_str(&v).map_err(err)).transpose()
    }

    async fn swap(
        &self,
        mesh_id: &str,
        name: &str,
        expected: Option<&Registration>,
        new: Option<&Registration>,
        max_servers: usize,
    ) -> RegistryResult<Swap> {
        // A value read from Redis re-encodes to the same text (serde_json is deterministic
        // for one value), so the script compares texts.
        let expected = expected.map(encode).transpose()?.unwrap_or_default();
        let new = new.map(encode).transpose()?.unwrap_or_default();
        let mut c = self.conn.clone();
        let out: i64 = self
            .swap
            .key(self.servers_key(mesh_id))
            .arg(name)
            .arg(expected)
            .arg(new)
            .arg(max_servers)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(match out {
            1 => Swap::Done,
            -2 => Swap::Full,
            _ => Swap::Conflict,
        })
    }

    async fn open(
        &self,
        mesh_id: &str,
        pending: &Pending,
        max_per_requester: usize,
        now_ms: i64,
    ) -> RegistryResult<bool> {
        let ttl = (pending.deadline_ms - now_ms).max(1) + PENDING_TTL_MARGIN_MS;
        let mut c = self.conn.clone();
        let out: i64 = self
            .open
            .key(self.pending_key(mesh_id, &pending.id))
            .key(format!(
                "{}{}",
                self.by_prefix(mesh_id),
                pending.requester_presence_id
            ))
            .key(format!(
                "{}{}",
                self.to_prefix(mesh_id),
                pending.target_presence_id
            ))
            .arg(encode(pending)?)
            .arg(pending.deadline_ms)
            .arg(now_ms)
            .arg(max_per_requester)
            .arg(ttl)
            .arg(&pending.id)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(out == 1)
    }

    async fn take(
        &self,
        mesh_id: &str,
        id: &str,
        from_target: Option<&str>,
    ) -> RegistryResult<Option<Pending>> {
        let mut c = self.conn.clone();
        let out: Option<String> = self
            .take
            .key(self.pending_key(mesh_id, id))
            .arg(from_target.unwrap_or_default())
            .arg(self.by_prefix(mesh_id))
            .arg(self.to_prefix(mesh_id))
            .arg(id)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        out.map(|v| serde_json::from_str(&v).map_err(err))
            .transpose()
    }

    async fn is_open(&self, mesh_id: &str, id: &str) -> RegistryResult<bool> {
        let mut c = self.conn.clone();
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.pending_key(mesh_id, id))
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(n == 1)
    }

    async fn open_to(
        &self,
        mesh_id: &str,
        target_presence_id: &str,
        now_ms: i64,
    ) -> RegistryResult<Vec<String>> {
        let mut c = self.conn.clone();
        let mut ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(format!("{}{target_presence_id}", self.to_prefix(mesh_id)))
            .arg(format!("({now_ms}"))
            .arg("+inf")
            .query_async(&mut c)
            .await
            .map_err(err)?;
        ids.sort();
        Ok(ids)
    }
}
