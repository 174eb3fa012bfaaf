//! A private Redis Cluster for tests: three masters (no replicas), each a `redis-server
//! --cluster-enabled yes` keeping nothing but its cluster config file, joined with
//! `redis-cli --cluster create`. A test can SIGKILL one shard and restart it with the same
//! port and config file: it comes back owning the same slots, empty.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Broker;
use super::pg;

pub struct RedisCluster {
    children: Vec<Option<Child>>,
    pub ports: Vec<u16>,
    dir: PathBuf,
}

/// A free port whose cluster bus port (`port + 10000`) is free too.
fn free_port_pair() -> u16 {
    loop {
        let port = 20_000 + (rand_u16() % 20_000);
        let a = std::net::TcpListener::bind(("127.0.0.1", port));
        let b = std::net::TcpListener::bind(("127.0.0.1", port + 10_000));
        if a.is_ok() && b.is_ok() {
            return port;
        }
    }
}

fn rand_u16() -> u16 {
    let id = broker::ids::random_id(4);
    u16::from_str_radix(&id[..4.min(id.len())], 16).unwrap_or(7)
}

fn pings(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl RedisCluster {
    /// Starts three masters and creates the cluster; returns once every node says
    /// `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let dir =
            std::env::temp_dir().join(format!("redis-cluster-test-{}", broker::ids::random_id(10)));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let p = free_port_pair();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let mut cluster = RedisCluster {
            children: vec![None, None, None],
            ports,
            dir,
        };
        for i in 0..3 {
            cluster.restart(i);
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli is installed");
        assert!(status.success(), "redis-cli --cluster create failed");
        cluster.wait_ok();
        cluster
    }

    /// Waits until every node reports `cluster_state:ok`.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for &p in &self.ports {
            while !cli(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(
                    Instant::now() < deadline,
                    "the Redis Cluster did not converge"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts shard `i` (again) with its port and cluster config file, empty.
    pub fn restart(&mut self, i: usize) {
        assert!(self.children[i].is_none(), "already running");
        let port = self.ports[i];
        let node_dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&node_dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "2000"])
            // The other shards keep serving while one is down.
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--appendonly", "no", "--save", ""])
            .arg("--dir")
            .arg(&node_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install -y redis-server)");
        self.children[i] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pings(port) {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs shard `i`: its connections drop and its data is lost.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The seed list for `REDIS_URL` with `REDIS_MODE=cluster`.
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the shard that owns `key`'s slot.
    pub fn shard_of(&self, key: &str) -> usize {
        let slot: u16 = cli(self.ports[0], &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        for (i, &p) in self.ports.iter().enumerate() {
            // The node's own line of CLUSTER NODES lists its slot ranges from field 9 on.
            let nodes = cli(p, &["CLUSTER", "NODES"]);
            let line = nodes.lines().find(|l| l.contains("myself")).unwrap_or("");
            for range in line.split_whitespace().skip(8) {
                let (lo, hi) = match range.split_once('-') {
                    Some((lo, hi)) => (
                        lo.parse::<u16>().unwrap_or(1),
                        hi.parse::<u16>().unwrap_or(0),
                    ),
                    None => match range.parse::<u16>() {
                        Ok(s) => (s, s),
                        Err(_) => continue,
                    },
                };
                if (lo..=hi).contains(&slot) {
                    return i;
                }
            }
        }
        panic!("no shard owns slot {slot}");
    }

    /// `calls` of one command on every shard together (`INFO commandstats`).
    pub fn calls(&self, command: &str) -> u64 {
        let prefix = format!("cmdstat_{command}:calls=");
        self.ports
            .iter()
            .map(|&p| {
                cli(p, &["INFO", "commandstats"])
                    .lines()
                    .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_string))
                    .and_then(|rest| rest.split(',').next().and_then(|n| n.parse::<u64>().ok()))
                    .unwrap_or(0)
            })
            .sum()
    }

    /// How many keys each shard holds.
    pub fn keys_per_shard(&self) -> Vec<u64> {
        self.ports
            .iter()
            .map(|&p| cli(p, &["DBSIZE"]).trim().parse().unwrap_or(0))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A database and a Redis Cluster shared by the replicas of one test.
pub struct ShardedCluster {
    pub db: String,
    pub redis: RedisCluster,
    pub extra: Vec<(String, String)>,
}

impl ShardedCluster {
    pub async fn new(extra: &[(&str, &str)]) -> ShardedCluster {
        let db = pg::fresh_db().await;
        let redis = tokio::task::spawn_blocking(RedisCluster::start)
            .await
            .unwrap();
        ShardedCluster {
            db,
            redis,
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Starts a replica named `node` against the Redis Cluster.
    pub fn replica(&self, node: &str) -> Broker {
        let urls = self.redis.urls();
        let mut env: Vec<(&str, &str)> = vec![
            ("DATABASE_URL", &self.db),
            ("REDIS_URL", &urls),
            ("REDIS_MODE", "cluster"),
            ("BROKER_NODE_ID", node),
            ("HEARTBEAT_INTERVAL_MS", "250"),
            ("NODE_DEAD_AFTER_MS", "2000"),
        ];
        env.extend(self.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        Broker::start(&env)
    }
}
