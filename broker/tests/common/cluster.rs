//! A cluster for tests: one fresh PostgreSQL database and one private redis-server that
//! any number of broker replicas share, each started with short heartbeat settings.

use super::Broker;
use super::pg;
use super::redis::RedisServer;

/// A database, a Redis and the environment the replicas of one test share.
pub struct Cluster {
    pub db: String,
    pub redis: RedisServer,
    pub extra: Vec<(String, String)>,
}

impl Cluster {
    pub async fn new(extra: &[(&str, &str)]) -> Cluster {
        let db = pg::fresh_db().await;
        let redis = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .unwrap();
        Cluster {
            db,
            redis,
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Starts a replica named `node` (its `BROKER_NODE_ID`).
    pub fn replica(&self, node: &str) -> Broker {
        let url = self.redis.url();
        let mut env: Vec<(&str, &str)> = vec![
            ("DATABASE_URL", &self.db),
            ("REDIS_URL", &url),
            ("BROKER_NODE_ID", node),
            ("HEARTBEAT_INTERVAL_MS", "250"),
            ("NODE_DEAD_AFTER_MS", "2000"),
        ];
        env.extend(self.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        Broker::start(&env)
    }

    /// `calls` of one Redis command so far (`INFO commandstats`).
    pub async fn redis_calls(&self, command: &str) -> u64 {
        let client = ::redis::Client::open(self.redis.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = ::redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut c)
            .await
            .unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }
}
