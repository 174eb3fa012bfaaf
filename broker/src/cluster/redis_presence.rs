//! [`Presence`] on Redis: the records every replica sees, the replica heartbeats, and the
//! cluster-wide limits. Every multi-key change is one Lua script, so it is atomic.
//!
//! Keys (`P` is `REDIS_PREFIX`): `P:presence:{mesh}` hash id → record JSON;
//! `P:owner:{mesh}` hash id → `conn|grace` (grace 0 = live); `P:grace` zset of records in
//! grace by deadline; `P:nodep:{node}` set of a node's live records; `P:nodes` zset of
//! node heartbeats; `P:reap:{node}` the claim of the replica reaping a dead node;
//! `P:sig:{signature}` replay guard; `P:rate:{key}` token buckets.
//! The scripts name some keys at run time, so this backend needs one Redis (or a Redis
//! with every key in one slot), not Redis Cluster.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::presence::{Presence, PresenceError, PresencePatch, PresenceRecord, PresenceResult};

fn err(e: redis::RedisError) -> PresenceError {
    PresenceError(e.to_string())
}

pub struct RedisPresence {
    conn: ConnectionManager,
    prefix: String,
    attach: Script,
    update: Script,
    release: Script,
    expire: Script,
    remove: Script,
    reap: Script,
    take_token: Script,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The node id of a connection id (`node/n`).
fn node_of(conn_id: &str) -> &str {
    conn_id.rsplit_once('/').map(|(n, _)| n).unwrap_or(conn_id)
}

/// A record and its owner string (`conn|grace`) as stored.
fn decode(record: Option<String>, owner: Option<String>) -> Option<PresenceRecord> {
    let mut r: PresenceRecord = serde_json::from_str(&record?).ok()?;
    let owner = owner?;
    let (conn, grace) = owner.rsplit_once('|')?;
    r.conn_id = conn.to_string();
    r.grace_until = grace.parse::<i64>().ok().filter(|g| *g > 0);
    Some(r)
}

impl RedisPresence {
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        RedisPresence {
            conn,
            prefix: prefix.to_string(),
            attach: Script::new(include_str!("lua/attach.lua")),
            update: Script::new(include_str!("lua/update.lua")),
            release: Script::new(include_str!("lua/release.lua")),
            expire: Script::new(include_str!("lua/expire.lua")),
            remove: Script::new(include_str!("lua/remove.lua")),
            reap: Script::new(include_str!("lua/reap.lua")),
            take_token: Script::new(include_str!("lua/take_token.lua")),
        }
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    fn grace_key(&self) -> String {
        format!("{}:grace", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    fn nodep_prefix(&self) -> String {
        format!("{}:nodep:", self.prefix)
    }

    async fn get(
        &self,
        mesh_id: &str,
        presence_id: &str,
    ) -> PresenceResult<Option<PresenceRecord>> {
        let mut c = self.conn.clone();
        let (record, owner): (Option<String>, Option<String>) = redis::pipe()
            .hget(self.key("presence", mesh_id), presence_id)
            .hget(self.key("owner", mesh_id), presence_id)
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(decode(record, owner))
    }

    async fn expire_one(
        &self,
        mesh_id: &str,
        presence_id: &str,
        now_ms: i64,
    ) -> PresenceResult<Option<PresenceRecord>> {
        let mut c = self.conn.clone();
        let out: Option<(Option<String>, Option<String>)> = self
            .expire
            .key(self.key("presence", mesh_id))
            .key(self.key("owner", mesh_id))
            .key(self.grace_key())
            .arg(presence_id)
            .arg(now_ms)
            .arg(format!("{mesh_id}|{presence_id}"))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(out.and_then(|(r, o)| decode(r, o)))
    }
}

#[async_trait]
impl Presence for RedisPresence {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn list(&self, mesh_id: &str) -> PresenceResult<Vec<PresenceRecord>> {
        let mut c = self.conn.clone();
        let (mut records, mut owners): (HashMap<String, String>, HashMap<String, String>) =
            redis::pipe()
                .hgetall(self.key("presence", mesh_id))
                .hgetall(self.key("owner", mesh_id))
                .query_async(&mut c)
                .await
                .map_err(err)?;
        let ids: Vec<String> = records.keys().cloned().collect();
        let mut out: Vec<PresenceRecord> = ids
            .iter()
            .filter_map(|id| decode(records.remove(id), owners.remove(id)))
            .collect();
        out.sort_by(|a, b| {
            a.connected_at
                .cmp(&b.connected_at)
                .then(a.presence_id.cmp(&b.presence_id))
        });
        Ok(out)
    }

    async fn attach(&self, record: PresenceRecord) -> PresenceResult<Option<PresenceRecord>> {
        let mut c = self.conn.clone();
        let json = serde_json::to_string(&record).map_err(|e| PresenceError(e.to_string()))?;
        let (old, owner): (Option<String>, Option<String>) = self
            .attach
            .key(self.key("presence", &record.mesh_id))
            .key(self.key("owner", &record.mesh_id))
            .key(self.grace_key())
            .key(self.key("nodep", node_of(&record.conn_id)))
            .arg(&record.presence_id)
            .arg(json)
            .arg(&record.conn_id)
            .arg(format!("{}|{}", record.mesh_id, record.presence_id))
            .arg(self.nodep_prefix())
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(decode(old, owner))
    }

    async fn update(
        &self,
        mesh_id: &str,
        presence_id: &str,
        conn_id: &str,
        patch: PresencePatch,
    ) -> PresenceResult<bool> {
        let Some(mut record) = self.get(mesh_id, presence_id).await? else {
            return Ok(false);
        };
        if record.conn_id != conn_id || !record.is_live() {
            return Ok(false);
        }
        patch.apply(&mut record);
        let json = serde_json::to_string(&record).map_err(|e| PresenceError(e.to_string()))?;
        let mut c = self.conn.clone();
        let done: i64 = self
            .update
            .key(self.key("presence", mesh_id))
            .key(self.key("owner", mesh_id))
            .arg(presence_id)
            .arg(conn_id)
            .arg(json)
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(done == 1)
    }

    async fn release(
        &self,
        mesh_id: &str,
        presence_id: &str,
        conn_id: &str,
        grace_until: i64,
    ) -> PresenceResult<bool> {
        let mut c = self.conn.clone();
        let done: i64 = self
            .release
            .key(self.key("owner", mesh_id))
            .key(self.grace_key())
            .key(self.key("nodep", node_of(conn_id)))
            .arg(presence_id)
            .arg(conn_id)
            .arg(grace_until)
            .arg(format!("{mesh_id}|{presence_id}"))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(done == 1)
    }

    async fn expire(
        &self,
        mesh_id: &str,
        presence_id: &str,
        now_ms: i64,
    ) -> PresenceResult<Option<PresenceRecord>> {
        self.expire_one(mesh_id, presence_id, now_ms).await
    }

    async fn remove(
        &self,
        mesh_id: &str,
        presence_id: &str,
        conn_id: &str,
    ) -> PresenceResult<Option<PresenceRecord>> {
        let mut c = self.conn.clone();
        let out: Option<(Option<String>, Option<String>)> = self
            .remove
            .key(self.key("presence", mesh_id))
            .key(self.key("owner", mesh_id))
            .key(self.grace_key())
            .key(self.key("nodep", node_of(conn_id)))
            .arg(presence_id)
            .arg(conn_id)
            .arg(format!("{mesh_id}|{presence_id}"))
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(out.and_then(|(r, o)| decode(r, o)))
    }

    async fn remember_signature(&self, signature: &str, ttl: Duration) -> PresenceResult<bool> {
        let mut c = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key("sig", signature))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(set.is_some())
    }

    async fn take_send_token(&self, key: &str, burst: u32, per_min: u32) -> PresenceResult<bool> {
        if burst == 0 || per_min == 0 {
            return Ok(true);
        }
        let mut c = self.conn.clone();
        let ok: i64 = self
            .take_token
            .key(self.key("rate", key))
            .arg(burst)
            .arg(per_min)
            .arg(crate::ids::now_ms())
            .invoke_async(&mut c)
            .await
            .map_err(err)?;
        Ok(ok == 1)
    }

    async fn healthy(&self) -> bool {
        let mut c = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_ok()
    }

    async fn heartbeat(&self, node_id: &str, now_ms: i64) -> PresenceResult<()> {
        let mut c = self.conn.clone();
        c.zadd::<_, _, _, ()>(self.nodes_key(), node_id, now_ms)
            .await
            .map_err(err)
    }

    async fn leave(&self, node_id: &str) -> PresenceResult<()> {
        let mut c = self.conn.clone();
        c.zrem::<_, _, ()>(self.nodes_key(), node_id)
            .await
            .map_err(err)
    }

    async fn reap_dead_nodes(&self, stale_before: i64) -> PresenceResult<Vec<PresenceRecord>> {
        let mut c = self.conn.clone();
        let dead: Vec<String> = c
            .zrangebyscore(self.nodes_key(), "-inf", stale_before)
            .await
            .map_err(err)?;
        let mut reaped = Vec::new();
        for node in dead {
            // One replica reaps a dead node; the claim expires in case that replica dies too.
            let claimed: Option<String> = redis::cmd("SET")
                .arg(self.key("reap", &node))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut c)
                .await
                .map_err(err)?;
            if claimed.is_none() {
                continue;
            }
            let members: Vec<String> = c.smembers(self.key("nodep", &node)).await.map_err(err)?;
            for m in members {
                let Some((mesh_id, presence_id)) = m.split_once('|') else {
                    continue;
                };
                let out: Option<(Option<String>, Option<String>)> = self
                    .reap
                    .key(self.key("presence", mesh_id))
                    .key(self.key("owner", mesh_id))
                    .arg(presence_id)
                    .arg(&node)
                    .invoke_async(&mut c)
                    .await
                    .map_err(err)?;
                reaped.extend(out.and_then(|(r, o)| decode(r, o)));
            }
            redis::pipe()
                .del(self.key("nodep", &node))
                .zrem(self.nodes_key(), &node)
                .query_async::<()>(&mut c)
                .await
                .map_err(err)?;
        }
        Ok(reaped)
    }

    async fn expire_due(&self, now_ms: i64) -> PresenceResult<Vec<PresenceRecord>> {
        let mut c = self.conn.clone();
        let due: Vec<String> = c
            .zrangebyscore_limit(self.grace_key(), "-inf", now_ms, 0, 256)
            .await
            .map_err(err)?;
        let mut out = Vec::new();
        for m in due {
            let Some((mesh_id, presence_id)) = m.split_once('|') else {
                c.zrem::<_, _, ()>(self.grace_key(), &m)
                    .await
                    .map_err(err)?;
                continue;
            };
            out.extend(self.expire_one(mesh_id, presence_id, now_ms).await?);
        }
        Ok(out)
    }
}
