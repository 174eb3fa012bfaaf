//! What the load tester's end-to-end tests share: the real broker binary (dev mode unless
//! told otherwise), the real `loadtest` binary, the operator API over plain HTTP, and
//! HAProxy terminating TLS with a certificate made by `openssl` for the test.
#![allow(
    dead_code,
    clippy::unwrap_used,
    reason = "shared by several test binaries, each using a part; tests fail loudly"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `target/<profile>/broker`, next to this package's binary; built with the same profile
/// when it is not there yet (it belongs to another package, so cargo does not build it
/// for this test by itself).
pub fn broker_binary() -> PathBuf {
    sibling_binary("broker")
}

/// `target/<profile>/NAME` of package NAME, built with the same profile when missing.
pub fn sibling_binary(name: &str) -> PathBuf {
    let loadtest = Path::new(env!("CARGO_BIN_EXE_loadtest"));
    let dir = loadtest.parent().unwrap();
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", name]);
        if dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "cargo build -p {name} failed");
    }
    assert!(bin.exists(), "no {name} binary at {}", bin.display());
    bin
}

const PG: &str = "postgres://postgres@127.0.0.1:5432";

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args([&format!("{PG}/postgres"), "-qAtc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private redis-server on a free port that keeps nothing on disk; killed when dropped.
pub struct Redis {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        let dir = TempDir::new("redis");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let r = Redis {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 16];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read(&mut buf)
                        .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
                {
                    return r;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A fresh PostgreSQL database (migrated by the real migrator) and a private Redis, for
/// broker replicas in cluster mode; the database is dropped at the end.
pub struct Cluster {
    pub db: String,
    pub redis: Redis,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db));
    }
}

impl Cluster {
    pub fn start() -> Cluster {
        let db = format!(
            "loadtest_{}_{}",
            std::process::id(),
            nanos() % 1_000_000_000
        );
        psql(&format!("CREATE DATABASE {db}"));
        let cluster = Cluster {
            db,
            redis: Redis::start(),
        };
        let out = Command::new(sibling_binary("migrator"))
            .arg("run")
            .env("DATABASE_URL", cluster.database_url())
            .output()
            .expect("migrator runs");
        assert!(
            out.status.success(),
            "migrator: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    }

    pub fn database_url(&self) -> String {
        format!("{PG}/{}", self.db)
    }

    /// Replica `node` of the cluster.
    pub fn replica(&self, node: &str) -> Broker {
        let redis = format!("redis://127.0.0.1:{}", self.redis.port);
        let db = self.database_url();
        Broker::start(&[
            ("DATABASE_URL", &db),
            ("REDIS_URL", &redis),
            ("BROKER_NODE_ID", node),
        ])
    }
}

/// A broker process, killed when dropped.
pub struct Broker {
    child: Child,
    /// `host:port` of the public listener.
    pub addr: String,
    /// `host:port` of the internal listener (`BROKER_INTERNAL_PORT`), when on.
    pub internal: Option<String>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    /// A dev-mode broker on an ephemeral port, operator token `t`, no send rate limit
    /// unless `env` sets one.
    pub fn start(env: &[(&str, &str)]) -> Broker {
        let mut cmd = Command::new(broker_binary());
        cmd.env_clear()
            .env("BROKER_HOST", "127.0.0.1")
            .env("BROKER_PORT", "0")
            .env("BROKER_ADMIN_TOKEN", "t")
            .env("BROKER_SEND_BURST", "0")
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("broker starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("broker exited before listening")
                .unwrap();
            if let Some(rest) = line.strip_prefix("listening on http://") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // With BROKER_INTERNAL_PORT the next line names the internal listener.
        let internal = env
            .iter()
            .any(|(k, _)| *k == "BROKER_INTERNAL_PORT")
            .then(|| {
                let line = lines.next().expect("broker exited").unwrap();
                line.strip_prefix("internal listening on http://")
                    .unwrap_or_else(|| panic!("not the internal listener: {line}"))
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_string()
            });
        // Keep draining stdout so the broker never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Broker {
            child,
            addr,
            internal,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// One operator API call over plain HTTP/1.1 (`Connection: close`); the status.
    pub fn api(&self, method: &str, path: &str) -> u16 {
        self.api_json(method, path).0
    }

    /// The same, with the body as JSON (`Null` when it is not).
    pub fn api_json(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        let to = self.internal.as_ref().unwrap_or(&self.addr);
        let mut s = TcpStream::connect(to).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nhost: {to}\r\nauthorization: Bearer t\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {resp:?}"));
        let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, serde_json::from_str(body).unwrap_or_default())
    }
}

/// `loadtest ARGS` to completion.
pub fn loadtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .output()
        .expect("loadtest runs")
}

/// The JSON object a `--json` run printed.
pub fn report(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A running `loadtest` whose stderr lines can be awaited.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub fn start(args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("loadtest starts");
        let err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (at most a minute) for a stderr line containing `needle`.
    pub fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(needle);
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("no {needle:?} on stderr; saw {:#?}", self.seen),
            }
        }
    }

    /// Waits for the exit; returns the status, stdout and the whole stderr.
    pub fn finish(mut self) -> (std::process::ExitStatus, String, String) {
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = self.child.wait().unwrap();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        (status, stdout, self.seen.join("\n"))
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p =
            std::env::temp_dir().join(format!("loadtest-{tag}-{}-{}", std::process::id(), nanos()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`{name}.pem`, `{name}.key`) in `dir`.
pub fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(format!("{name}.pem"))
}

/// A server certificate for `localhost` and 127.0.0.1 signed by CA `ca`, as one PEM of
/// certificate and key (what HAProxy's `crt` takes).
pub fn make_server_pem(dir: &Path, ca: &str) -> PathBuf {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    let mut pem = std::fs::read(dir.join("server.crt")).unwrap();
    pem.extend(std::fs::read(dir.join("server.key")).unwrap());
    let out = dir.join("server.pem");
    std::fs::write(&out, pem).unwrap();
    out
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// HAProxy terminating TLS on 127.0.0.1:`port` in front of `backend` (TCP mode, so the
/// WebSocket and the operator API both pass), killed when dropped.
pub struct Haproxy {
    child: Child,
    pub port: u16,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Haproxy {
    pub fn start(dir: &Path, pem: &Path, backend: &str) -> Haproxy {
        let port = free_port();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\nfrontend tls\n  bind 127.0.0.1:{port} ssl crt {}\n  default_backend broker\nbackend broker\n  server b {backend}\n",
                pem.display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("haproxy starts");
        let mut h = Haproxy { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = h.child.try_wait() {
                panic!("haproxy exited: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "haproxy never listened on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }
}
