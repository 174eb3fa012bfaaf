//! A replica that sheds handshakes (`overloaded` with `retryAfterMs`, or 503 with
//! `Retry-After` before the upgrade): the load tester waits what the broker asks, gets
//! everyone in, and reports the refusals apart. Against the real broker binary.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use common::{Broker, loadtest, report, stderr};

/// What `HANDSHAKE_RETRY_AFTER_MS` is set to: every refusal asks for at least this.
const RETRY_AFTER_MS: u64 = 200;

#[test]
fn a_burst_against_a_shedding_replica_connects_everyone_after_the_asked_waits() {
    // One handshake at a time, one waiting, for 1 ms: a burst of 40 is mostly shed.
    let retry = RETRY_AFTER_MS.to_string();
    let b = Broker::start(&[
        ("HANDSHAKE_CONCURRENCY", "1"),
        ("HANDSHAKE_QUEUE_MAX", "1"),
        ("HANDSHAKE_QUEUE_WAIT_MS", "1"),
        ("HANDSHAKE_RETRY_AFTER_MS", &retry),
    ]);
    let url = b.ws_url();
    let out = loadtest(&[
        "--url",
        &url,
        "--token",
        "t",
        "--json",
        "--timeout",
        "60",
        "--connect-parallel",
        "64",
        "dm",
        "--peers",
        "40",
        "--messages",
        "2",
    ]);
    let v = report(&out);
    // Refused handshakes that got in later are no failure: not even without --allow-refused.
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["refused"], 0, "overloaded refusals are not refusals: {v}");
    assert_eq!(v["delivered"], 80, "every peer got in and sent: {v}");
    let refusals = v["overloaded_refusals"].as_u64().unwrap();
    assert!(refusals > 0, "the burst was shed: {v}");
    let by = v["overloaded_refusals_by"].as_object().unwrap();
    assert_eq!(
        by.values().map(|n| n.as_u64().unwrap()).sum::<u64>(),
        refusals,
        "{v}"
    );
    // Each refusal asked for at least HANDSHAKE_RETRY_AFTER_MS and was waited in full (the
    // harness's own backoff starts at 25–50 ms, so it would fall short of this).
    let waited = v["overloaded_wait_ms"].as_f64().unwrap();
    assert!(
        waited >= (refusals * RETRY_AFTER_MS) as f64,
        "waited {waited} ms for {refusals} refusals: {v}"
    );
    let asked_max = v["overloaded_retry_after_max_ms"].as_f64().unwrap();
    assert!(asked_max >= RETRY_AFTER_MS as f64, "{v}");
    assert_eq!(v["overloaded_waits_capped"], 0, "{v}");
    // None of them is a connect failure.
    let failures = v["connect_failures"].as_object().unwrap();
    assert!(
        failures
            .keys()
            .all(|k| !k.contains("overloaded") && !k.contains("upgrade")),
        "{v}"
    );
}

#[test]
fn churn_retries_shed_cycles_after_the_asked_wait() {
    let retry = RETRY_AFTER_MS.to_string();
    let b = Broker::start(&[
        ("HANDSHAKE_CONCURRENCY", "1"),
        ("HANDSHAKE_QUEUE_MAX", "1"),
        ("HANDSHAKE_QUEUE_WAIT_MS", "1"),
        ("HANDSHAKE_RETRY_AFTER_MS", &retry),
    ]);
    let url = b.ws_url();
    // 200 connect+hello+close cycles offered within 0.2 s: far more than one at a time.
    let out = loadtest(&[
        "--url",
        &url,
        "--token",
        "t",
        "--json",
        "--timeout",
        "60",
        "churn",
        "--rate",
        "1000",
        "--duration",
        "0.2",
        "--peers",
        "20",
        "--fresh-sessions",
    ]);
    let v = report(&out);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert_eq!(v["handshakes_ok"], v["cycles"], "every cycle got in: {v}");
    assert_eq!(v["refused"], 0, "{v}");
    let refusals = v["overloaded_refusals"].as_u64().unwrap();
    assert!(refusals > 0, "the burst was shed: {v}");
    let waited = v["overloaded_wait_ms"].as_f64().unwrap();
    assert!(
        waited >= (refusals * RETRY_AFTER_MS) as f64,
        "waited {waited} ms for {refusals} refusals: {v}"
    );
}
