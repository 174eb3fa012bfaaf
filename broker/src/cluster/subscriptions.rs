//! Stream subscriptions (extensions §4): which presences of a mesh subscribe to which
//! stream, in the registry every replica shares, keyed by presence.
//!
//! # Semantics every backend gives
//!
//! - **Keyed by presence, not by socket:** a subscription belongs to a presence id, so it
//!   outlives the socket: a presence that reattaches (on any replica) within its lease grace
//!   keeps it. The session lifecycle drops a presence's subscriptions when the presence
//!   ends for good ([`StreamSubscriptions::remove_presence`], from `end_presence`: grace
//!   expiry, kick, ban, replacement, the reaper of a dead replica).
//! - **Atomic bound:** [`StreamSubscriptions::subscribe`] checks the per-presence bound and
//!   subscribes in one step, so concurrent subscribes cannot overshoot it.
//! - **Stale entries are pruned:** a presence that ended without `end_presence` running
//!   (a replica died between the two) can leave entries behind; callers intersect
//!   [`StreamSubscriptions::subscribers`] with the presence registry and hand the rest to
//!   [`StreamSubscriptions::prune`].
//! - **Ephemeral:** live state, like presence: nothing here survives a restart of the
//!   backend (a Redis data loss drops every subscription; clients subscribe again).
//!
//! [`MemoryStreamSubscriptions`] is single node only; [`RedisStreamSubscriptions`] keeps
//! `P:spres:{mesh}:{presence}` (the presence's stream names) and `P:sstream:{mesh}:{stream}`
//! (the stream's presence ids), changed together by Lua scripts (`lua/stream_*.lua`); with
//! Redis Cluster `{P:m:{mesh}}:spres:{presence}` and `{P:m:{mesh}}:sstream:{stream}` (one
//! slot per mesh, see `redis_conn::Keys`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use redis::Script;

use super::redis_conn::{Keys, RedisConn};

#[derive(Debug, Clone, thiserror::Error)]
#[error("stream subscriptions unavailable: {0}")]
pub struct SubscriptionError(pub String);

pub type SubscriptionResult<T> = Result<T, SubscriptionError>;

/// What [`StreamSubscriptions::subscribe`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribe {
    Added,
    /// The presence was subscribed already.
    Already,
    /// The presence has the most subscriptions it may have: nothing changed.
    Full,
}

#[async_trait]
pub trait StreamSubscriptions: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    /// Subscribes `presence_id` to `stream`, unless it has `max_per_presence` other
    /// subscriptions (`0`: no bound).
    async fn subscribe(
        &self,
        mesh_id: &str,
        presence_id: &str,
        stream: &str,
        max_per_presence: usize,
    ) -> SubscriptionResult<Subscribe>;
    /// `true` when the presence was subscribed.
    async fn unsubscribe(
        &self,
        mesh_id: &str,
        presence_id: &str,
        stream: &str,
    ) -> SubscriptionResult<bool>;
    /// The presence ids subscribed to each of `streams`, in the same order.
    async fn subscribers(
        &self,
        mesh_id: &str,
        streams: &[&str],
    ) -> SubscriptionResult<Vec<Vec<String>>>;
    /// The streams `presence_id` subscribes to, sorted.
    async fn streams_of(&self, mesh_id: &str, presence_id: &str)
    -> SubscriptionResult<Vec<String>>;
    /// Drops every subscription of a presence that ended for good; returns how many.
    async fn remove_presence(&self, mesh_id: &str, presence_id: &str) -> SubscriptionResult<usize>;
    /// Drops presences that no longer exist (found among a stream's subscribers) with
    /// every subscription they had.
    async fn prune(&self, mesh_id: &str, presence_ids: &[String]) -> SubscriptionResult<()> {
        for id in presence_ids {
            self.remove_presence(mesh_id, id).await?;
        }
        Ok(())
    }
}

/// In-process subscriptions: single node only.
#[derive(Debug, Default)]
pub struct MemoryStreamSubscriptions {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// (mesh, presence) → stream names.
    by_presence: HashMap<(String, String), BTreeSet<String>>,
    /// (mesh, stream) → presence ids.
    by_stream: HashMap<(String, String), BTreeSet<String>>,
}

impl MemoryStreamSubscriptions {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn key(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

#[async_trait]
impl StreamSubscriptions for MemoryStreamSubscriptions {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn subscribe(
        &self,
        mesh_id: &str,
        presence_id: &str,
        stream: &str,
        max_per_presence: usize,
    ) -> SubscriptionResult<Subscribe> {
        let mut inner = self.lock();
        let mine = inner
            .by_presence
            .entry(key(mesh_id, presence_id))
            .or_default();
        let outcome = if mine.contains(stream) {
            Subscribe::Already
        } else if max_per_presence > 0 && mine.len() >= max_per_presence {
            Subscribe::Full
        } else {
            mine.insert(stream.to_string());
            Subscribe::Added
        };
        if mine.is_empty() {
            inner.by_presence.remove(&key(mesh_id, presence_id));
        }
        if outcome != Subscribe::Full {
            inner
                .by_stream
                .entry(key(mesh_id, stream))
                .or_default()
                .insert(presence_id.to_string());
        }
        Ok(outcome)
    }

    async fn unsubscribe(
        &self,
        mesh_id: &str,
        presence_id: &str,
        stream: &str,
    ) -> SubscriptionResult<bool> {
        let mut inner = self.lock();
        let k = key(mesh_id, presence_id);
        let was = inner
            .by_presence
            .get_mut(&k)
            .is_some_and(|s| s.remove(stream));
        if inner.by_presence.get(&k).is_some_and(BTreeSet::is_empty) {
            inner.by_presence.remove(&k);
        }
        let sk = key(mesh_id, stream);
        if let Some(s) = inner.by_stream.get_mut(&sk) {
            s.remove(presence_id);
            if s.is_empty() {
                inner.by_stream.remove(&sk);
            }
        }
        Ok(was)
    }

    async fn subscribers(
        &self,
        mesh_id: &str,
        streams: &[&str],
    ) -> SubscriptionResult<Vec<Vec<String>>> {
        let inner = self.lock();
        Ok(streams
            .iter()
            .map(|s| {
                inner
                    .by_stream
                    .get(&key(mesh_id, s))
                    .map(|p| p.iter().cloned().collect())
                    .unwrap_or_default()
            })
            .collect())
    }

    async fn streams_of(
        &self,
        mesh_id: &str,
        presence_id: &str,
    ) -> SubscriptionResult<Vec<String>> {
        let inner = self.lock();
        Ok(inner
            .by_presence
            .get(&key(mesh_id, presence_id))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn remove_presence(&self, mesh_id: &str, presence_id: &str) -> SubscriptionResult<usize> {
        let mut inner = self.lock();
        let streams = inner
            .by_presence
            .remove(&key(mesh_id, presence_id))
            .unwrap_or_default();
        for s in &streams {
            let sk = key(mesh_id, s);
            if let Some(p) = inner.by_stream.get_mut(&sk) {
                p.remove(presence_id);
                if p.is_empty() {
                    inner.by_stream.remove(&sk);
                }
            }
        }
        Ok(streams.len())
    }
}

/// Subscriptions in Redis, shared by every replica.
pub struct RedisStreamSubscriptions {
    conn: RedisConn,
    keys: Keys,
    subscribe: Script,
    remove_presence: Script,
}

impl std::fmt::Debug for RedisStreamSubscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamSubscriptions")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

fn err(e: redis::RedisError) -> SubscriptionError {
    SubscriptionError(e.to_string())
}

impl RedisStreamSubscriptions {
    /// With one Redis or Redis Cluster: the key layout follows the connection.
    pub fn new(conn: impl Into<RedisConn>, prefix: &str) -> Self {
        let conn = conn.into();
        let keys = Keys::new(prefix, conn.is_cluster());
        RedisStreamSubscriptions {
            conn,
            keys,
            subscribe: Script::new(include_str!("lua/stream_subscribe.lua")),
            remove_presence: Script::new(include_str!("lua/stream_remove_presence.lua")),
        }
    }

    fn presence_key(&self, mesh_id: &str, presence_id: &str) -> String {
        self.keys.mesh("spres", mesh_id, presence_id)
    }

    /// The subscriber set of a stream is this prefix followed by the stream name.
    fn stream_prefix(&self, mesh_id: &str) -> String {
        format!("{}:", self.keys.mesh("sstream", mesh_id, ""))
    }
}

#[async_trait]
impl StreamSubscriptions for RedisStreamSubscriptions {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn subscribe(
        &self,
        mesh_id: &str,
        presence_id: &str,
        stream: &str,
        max_per_presence: usize,
    ) -> SubscriptionResult<Subscribe> {
        let mut c = self.conn.clone();
        let out: i64 = self
            .subscribe
            .key(self.presence_key(mesh_id, presence_id))
            .key(format!("{}{stream}", self.stream_prefix(mesh_id)))
            .arg(stream)
            .arg(presence_id)
            .arg(max_per_presence)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(match out {
            1 => Subscribe::Added,
            0 => Subscribe::Already,
            _ => Subscribe::Full,
        })
    }

    async fn unsubscribe(
        &self,
        mesh_id: &str,
        presence_id: &str,
        stream: &str,
    ) -> SubscriptionResult<bool> {
        let mut c = self.conn.clone();
        let (was, _): (i64, i64) = redis::pipe()
            .atomic()
            .srem(self.presence_key(mesh_id, presence_id), stream)
            .srem(
                format!("{}{stream}", self.stream_prefix(mesh_id)),
                presence_id,
            )
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(was == 1)
    }

    async fn subscribers(
        &self,
        mesh_id: &str,
        streams: &[&str],
    ) -> SubscriptionResult<Vec<Vec<String>>> {
        if streams.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        let prefix = self.stream_prefix(mesh_id);
        let mut pipe = redis::pipe();
        for s in streams {
            pipe.smembers(format!("{prefix}{s}"));
        }
        let mut out: Vec<Vec<String>> = pipe.query_async(&mut c).await.map_err(err)?;
        for ids in &mut out {
            ids.sort();
        }
        Ok(out)
    }

    async fn streams_of(
        &self,
        mesh_id: &str,
        presence_id: &str,
    ) -> SubscriptionResult<Vec<String>> {
        let mut c = self.conn.clone();
        let mut out: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.presence_key(mesh_id, presence_id))
            .query_async(&mut c)
            .await
            .map_err(err)?;
        out.sort();
        Ok(out)
    }

    async fn remove_presence(&self, mesh_id: &str, presence_id: &str) -> SubscriptionResult<usize> {
        let mut c = self.conn.clone();
        let n: i64 = self
            .remove_presence
            .key(self.presence_key(mesh_id, presence_id))
            .arg(self.stream_prefix(mesh_id))
            .arg(presence_id)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(n.max(0) as usize)
    }
}
