//! A private S3-compatible object store for tests: moto's HTTP server (`moto_server`, from
//! PyPI), one per test on a free loopback port, with one bucket. `FILES_MOTO_SERVER` names
//! the binary: `./scripts/test` and `./scripts/s3-tools` install it into a venv under
//! `target/s3-tools/` and set it; without it the tests that need it fail (they are not
//! skipped).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker::objects::{Objects, S3Config};

pub const BUCKET: &str = "broker-files";
pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key-never-logged";

pub struct Moto {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
}

fn binary() -> String {
    std::env::var("FILES_MOTO_SERVER").unwrap_or_else(|_| {
        panic!(
            "FILES_MOTO_SERVER is unset: run the suite with ./scripts/test, or these tests with \
             ./scripts/s3-tools (both install moto's server into a venv and set it)"
        )
    })
}

impl Moto {
    /// Starts moto on a free port and creates [`BUCKET`] through the broker's own client.
    pub async fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::env::temp_dir().join(format!("moto-{}.log", broker::ids::random_id(10)));
        let mut moto = Moto {
            child: None,
            port,
            log,
        };
        moto.restart().await;
        moto.objects().create_bucket().await.unwrap();
        moto
    }

    /// Starts the server (again) on the same port. moto keeps everything in memory: a
    /// restart is empty.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(binary())
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .expect("FILES_MOTO_SERVER names moto_server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://127.0.0.1:{}/moto-api/", self.port);
        loop {
            if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                drop(s);
                // Listening is not serving yet: one answered request is.
                if super::http(
                    format!("127.0.0.1:{}", self.port).parse().unwrap(),
                    "GET",
                    "/moto-api/data.json",
                    None,
                    None,
                )
                .is_ok_and(|(status, _)| status == 200)
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on {url}; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server: requests to it fail to connect.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The broker environment of this store.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("FILES_S3_ENDPOINT", self.endpoint()),
            ("FILES_S3_BUCKET", BUCKET.to_string()),
            ("FILES_S3_REGION", "us-east-1".to_string()),
            ("FILES_S3_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("FILES_S3_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("FILES_S3_PATH_STYLE", "true".to_string()),
            ("FILES_S3_TIMEOUT_MS", "5000".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub fn config(&self) -> S3Config {
        S3Config {
            endpoint: self.endpoint().parse().unwrap(),
            bucket: BUCKET.into(),
            region: "us-east-1".into(),
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: zeroize::Zeroizing::new(SECRET_KEY.into()),
            path_style: true,
            presign: false,
            prefix: "files/".into(),
            part_bytes: broker::objects::MIN_PART_BYTES,
            timeout: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(3600),
        }
    }

    /// A client of the bucket, for checks straight against the store (signed requests).
    pub fn objects(&self) -> Objects {
        Objects::new(&self.config()).unwrap()
    }

    /// The keys in the bucket.
    pub async fn keys(&self) -> Vec<String> {
        let (page, _) = self.objects().list(None).await.unwrap();
        page.into_iter().map(|l| l.key).collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}
