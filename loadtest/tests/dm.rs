//! End to end: the real broker binary in dev mode, the real `loadtest dm` against it.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::process::Command;

use common::Broker;

#[test]
fn every_direct_message_is_delivered_once() {
    let broker = Broker::start(&[]);
    let addr = &broker.addr;
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
