//! End to end: the real broker binary in dev mode, the real `loadtest dm` against it.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The broker process, killed when dropped.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `target/<profile>/broker`, next to this package's binary; built with the same profile
/// when it is not there yet (it belongs to another package, so cargo does not build it
/// for this test by itself).
fn broker_binary() -> PathBuf {
    let loadtest = Path::new(env!("CARGO_BIN_EXE_loadtest"));
    let dir = loadtest.parent().unwrap();
    let broker = dir.join(format!("broker{}", std::env::consts::EXE_SUFFIX));
    if !broker.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "broker"]);
        if dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "cargo build -p broker failed");
    }
    assert!(broker.exists(), "no broker binary at {}", broker.display());
    broker
}

fn start_broker() -> (Broker, String) {
    let mut child = Command::new(broker_binary())
        .env_clear()
        .env("BROKER_HOST", "127.0.0.1")
        .env("BROKER_PORT", "0")
        .env("BROKER_ADMIN_TOKEN", "t")
        .env("BROKER_SEND_BURST", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("broker starts");
    let stdout = child.stdout.take().unwrap();
    let broker = Broker(child);
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
    // Keep draining stdout so the broker never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (broker, addr)
}

#[test]
fn every_direct_message_is_delivered_once() {
    let (_broker, addr) = start_broker();
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "--url",
            &format!("ws://{addr}/ws"),
            "--token",
            "t",
            "--timeout",
            "30",
        ])
        .args(["dm", "--peers", "4", "--messages", "10", "--json"])
        .args(["--min-delivered", "1"])
        .output()
        .expect("loadtest runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadtest failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "stdout is one JSON object: {stdout}"
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["scenario"], "dm");
    assert_eq!(v["peers"], 4);
    assert_eq!(v["messages"], 40);
    assert_eq!(v["accepted"], 40, "{v}");
    assert_eq!(v["delivered"], 40, "{v}");
    assert_eq!(v["duplicates"], 0, "{v}");
    assert_eq!(v["lost_acked"], 0, "{v}");
    assert_eq!(v["open_failures"], 0, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    for field in [
        "delivered_per_sec",
        "ack_p50_ms",
        "ack_p99_ms",
        "e2e_p50_ms",
        "e2e_p99_ms",
        "e2e_max_ms",
    ] {
        assert!(v[field].is_number(), "{field} is not a number in {v}");
    }
}
