//! One Redis connection type for a single Redis and for Redis Cluster, and the key layout
//! that depends on which one it is.
//!
//! With one Redis every key keeps its historical name (`P:kind:id`), so a rolling upgrade
//! mixes old and new replicas safely. With Redis Cluster (`REDIS_MODE=cluster`) keys carry
//! hash tags so every multi-key step touches one slot: a mesh's keys share the tag
//! `{P:m:<mesh>}`, the cluster-wide keys (replica heartbeats, the grace and per-node
//! hints, the data epoch) share `{P}`; see `docs/redis-cluster.md`.

use std::collections::BTreeMap;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection to one Redis or to a Redis Cluster (routed by key slot).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// Redis Cluster: the run id of every primary by address (a primary restarted empty has
    /// a new one), once every primary reports `cluster_state:ok`; `None` before that, with
    /// one Redis, or when a primary does not answer.
    pub async fn shard_runs(&self) -> Option<BTreeMap<String, String>> {
        let RedisConn::Cluster(c) = self else {
            return None;
        };
        let mut c = c.clone();
        let all = || RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let states = c
            .route_command(redis::cmd("CLUSTER").arg("INFO").clone(), all())
            .await
            .ok()?;
        if per_node(states)?
            .values()
            .any(|info| !info.contains("cluster_state:ok"))
        {
            return None;
        }
        let infos = c
            .route_command(redis::cmd("INFO").arg("server").clone(), all())
            .await
            .ok()?;
        per_node(infos)?
            .into_iter()
            .map(|(addr, info)| {
                let run = info
                    .lines()
                    .find_map(|l| l.strip_prefix("run_id:"))?
                    .trim()
                    .to_string();
                Some((addr, run))
            })
            .collect()
    }
}

/// A multi-node reply (address → text) as a map.
fn per_node(v: Value) -> Option<BTreeMap<String, String>> {
    let Value::Map(pairs) = v else {
        return None;
    };
    pairs
        .into_iter()
        .map(|(k, v)| {
            Some((
                redis::from_redis_value::<String>(k).ok()?,
                redis::from_redis_value::<String>(v).ok()?,
            ))
        })
        .collect()
}

impl From<ConnectionManager> for RedisConn {
    fn from(c: ConnectionManager) -> Self {
        RedisConn::Single(c)
    }
}

impl From<ClusterConnection> for RedisConn {
    fn from(c: ClusterConnection) -> Self {
        RedisConn::Cluster(c)
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Key names: historical ones with one Redis, hash-tagged ones with Redis Cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    cluster: bool,
}

impl Keys {
    pub fn new(prefix: &str, cluster: bool) -> Self {
        Keys {
            prefix: prefix.to_string(),
            cluster,
        }
    }

    pub fn cluster(&self) -> bool {
        self.cluster
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A key of one mesh (`kind` of mesh `mesh`, with `rest` appended when not empty):
    /// `P:kind:mesh[:rest]`, or `{P:m:mesh}:kind[:rest]` in a cluster (one slot per mesh).
    pub fn mesh(&self, kind: &str, mesh: &str, rest: &str) -> String {
        let p = &self.prefix;
        match (self.cluster, rest.is_empty()) {
            (false, true) => format!("{p}:{kind}:{mesh}"),
            (false, false) => format!("{p}:{kind}:{mesh}:{rest}"),
            (true, true) => format!("{{{p}:m:{mesh}}}:{kind}"),
            (true, false) => format!("{{{p}:m:{mesh}}}:{kind}:{rest}"),
        }
    }

    /// A cluster-wide key: `P:kind[:id]`, or `{P}:kind[:id]` in a cluster (all in one slot).
    pub fn global(&self, kind: &str, id: &str) -> String {
        let p = &self.prefix;
        match (self.cluster, id.is_empty()) {
            (false, true) => format!("{p}:{kind}"),
            (false, false) => format!("{p}:{kind}:{id}"),
            (true, true) => format!("{{{p}}}:{kind}"),
            (true, false) => format!("{{{p}}}:{kind}:{id}"),
        }
    }

    /// A key that no script combines with another: `P:kind:id` in both modes (its whole
    /// name is hashed, so these spread over the shards).
    pub fn lone(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    /// A key of a group of keys that scripts combine, with a tag of their own in a cluster:
    /// `P:kind:id`, or `{P:kind}:id`.
    pub fn grouped(&self, kind: &str, id: &str) -> String {
        if self.cluster {
            format!("{{{}:{kind}}}:{id}", self.prefix)
        } else {
            format!("{}:{kind}:{id}", self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn single_redis_keeps_the_historical_names_and_a_cluster_tags_them_by_slot() {
        let single = Keys::new("P", false);
        assert_eq!(single.mesh("presence", "m1", ""), "P:presence:m1");
        assert_eq!(single.mesh("skey", "m1", "k"), "P:skey:m1:k");
        assert_eq!(single.global("nodes", ""), "P:nodes");
        assert_eq!(single.global("reap", "n1"), "P:reap:n1");
        assert_eq!(single.grouped("hookp", "index"), "P:hookp:index");
        let cluster = Keys::new("P", true);
        assert_eq!(cluster.mesh("presence", "m1", ""), "{P:m:m1}:presence");
        assert_eq!(cluster.mesh("skey", "m1", "k"), "{P:m:m1}:skey:k");
        assert_eq!(cluster.global("nodes", ""), "{P}:nodes");
        assert_eq!(cluster.grouped("hookp", "index"), "{P:hookp}:index");
        assert_eq!(cluster.lone("sig", "s"), "P:sig:s");
    }
}
