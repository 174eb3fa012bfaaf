//! A run passes only if it did what it set out to do; it cleans up after itself; stages
//! and the per-second series. Each against the real broker binary.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use common::{Broker, Running, TempDir, loadtest, report, stderr};

fn failures(v: &serde_json::Value) -> String {
    v["failures"].to_string()
}

#[test]
fn refused_sends_fail_the_run_unless_allowed() {
    // A bucket of 3 and a refill of 1 a minute: most of 2 × 10 sends are refused.
    let b = Broker::start(&[("BROKER_SEND_BURST", "3"), ("BROKER_SEND_PER_MIN", "1")]);
    let url = b.ws_url();
    let args = [
        "--url",
        &url,
        "--token",
        "t",
        "--json",
        "--timeout",
        "30",
        "dm",
        "--peers",
        "2",
        "--messages",
        "10",
    ];
    let out = loadtest(&args);
    let v = report(&out);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(v["rejected"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["refused"], v["rejected"], "{v}");
    assert_eq!(v["settled"], true, "every send got its answer: {v}");
    assert!(failures(&v).contains("--allow-refused"), "{v}");
    assert!(
        failures(&v).contains("rate_limit"),
        "the reason is named: {v}"
    );
    assert!(stderr(&out).contains("result: FAILED"), "{}", stderr(&out));

    let mut allowed = args.to_vec();
    allowed.push("--allow-refused");
    let out = loadtest(&allowed);
    let v = report(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["rejected"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn sends_cut_off_by_max_run_fail_the_run_unless_allowed() {
    let b = Broker::start(&[]);
    let url = b.ws_url();
    // 200 sends at 20/s would take 10 s; --max-run stops it after 1.
    let args = [
        "--url",
        &url,
        "--token",
        "t",
        "--json",
        "--max-run",
        "1",
        "dm",
        "--peers",
        "2",
        "--messages",
        "100",
        "--rate",
        "20",
    ];
    let out = loadtest(&args);
    let v = report(&out);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(v["planned"], 200, "{v}");
    let unsent = v["unsent"].as_u64().unwrap();
    assert!(unsent > 0 && unsent < 200, "{v}");
    assert_eq!(v["messages"].as_u64().unwrap() + unsent, 200, "{v}");
    assert_eq!(v["settled"], false, "{v}");
    assert!(failures(&v).contains("--allow-unsent"), "{v}");
    assert!(
        failures(&v).contains("stopped by --max-run 1 s"),
        "the cause is named: {v}"
    );
    assert!(failures(&v).contains("--allow-unsettled"), "{v}");

    let mut allowed = args.to_vec();
    allowed.extend(["--allow-unsent", "--allow-unsettled"]);
    let out = loadtest(&allowed);
    let v = report(&out);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
}

#[test]
fn idle_fails_when_connections_drop_during_the_hold() {
    let mut b = Broker::start(&[]);
    let (url, pid) = (b.ws_url(), b.pid().to_string());
    let mut run = Running::start(&[
        "--url",
        &url,
        "--token",
        "t",
        "--json",
        "--broker-pid",
        &pid,
        "idle",
        "--connections",
        "4",
        "--hold",
        "3",
    ]);
    run.wait_for("connections up");
    // A real fault in the middle of the hold.
    b.kill();
    let (status, stdout, err) = run.finish();
    assert_eq!(status.code(), Some(1), "{err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(v["dropped"].as_u64().unwrap() >= 4, "{v}");
    assert!(failures(&v).contains("lost during the hold"), "{v}");
    assert!(failures(&v).contains("--allow-disconnects"), "{v}");
    assert!(err.contains("result: FAILED"), "{err}");
}

#[test]
fn a_quiet_idle_hold_passes() {
    let b = Broker::start(&[]);
    let (url, pid) = (b.ws_url(), b.pid().to_string());
    let out = loadtest(&[
        "--url",
        &url,
        "--token",
        "t",
        "--json",
        "--broker-pid",
        &pid,
        "idle",
        "--connections",
        "3",
        "--hold",
        "1",
    ]);
    let v = report(&out);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert_eq!(
        (v["dropped"].as_u64(), v["connected_at_end"].as_u64()),
        (Some(0), Some(3))
    );
}

#[test]
fn a_run_deletes_what_it_created_unless_keep() {
    let b = Broker::start(&[]);
    let url = b.ws_url();
    let out = loadtest(&[
        "--url",
        &url,
        "--token",
        "t",
        "--json",
        "dm",
        "--peers",
        "3",
        "--messages",
        "2",
        "--per-mesh",
        "2",
    ]);
    let v = report(&out);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    let meshes: Vec<String> = serde_json::from_value(v["created_meshes"].clone()).unwrap();
    assert_eq!(meshes.len(), 2, "{v}");
    assert_eq!(v["cleanup"]["meshes_deleted"], 2, "{v}");
    assert_eq!(v["cleanup"]["members_deleted"], 3, "{v}");
    assert_eq!(v["cleanup"]["warnings"], serde_json::json!([]), "{v}");
    for m in &meshes {
        assert_eq!(
            b.api("GET", &format!("/api/v1/meshes/{m}")),
            404,
            "mesh {m} is left"
        );
    }

    let out = loadtest(&[
        "--url",
        &url,
        "--token",
        "t",
        "--json",
        "--keep",
        "dm",
        "--peers",
        "2",
        "--messages",
        "1",
    ]);
    let v = report(&out);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert!(v.get("cleanup").is_none(), "{v}");
    assert_eq!(v["kept"], true);
    let kept: Vec<String> = serde_json::from_value(v["created_meshes"].clone()).unwrap();
    assert_eq!(b.api("GET", &format!("/api/v1/meshes/{}", kept[0])), 200);
    assert!(stderr(&out).contains(&kept[0]), "the kept ids are printed");
}

/// Rows of a CSV series as maps of column → value.
fn csv_rows(path: &std::path::Path) -> Vec<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            assert_eq!(cells.len(), header.len(), "{l}");
            header
                .iter()
                .cloned()
                .zip(cells.iter().map(|c| c.to_string()))
                .collect()
        })
        .collect()
}

fn sum(rows: &[std::collections::BTreeMap<String, String>], col: &str) -> u64 {
    rows.iter().map(|r| r[col].parse::<u64>().unwrap()).sum()
}

#[test]
fn a_staged_dm_run_sends_the_profile_and_writes_a_csv_series() {
    let b = Broker::start(&[]);
    let url = b.ws_url();
    let dir = TempDir::new("series");
    let csv = dir.path("dm.csv");
    // Ramp 0 → 20/s over 1 s (10 sends), then hold 20/s for 2 s (40 sends).
    let out = loadtest(&[
        "--url",
        &url,
        "--token",
        "t",
        "--json",
        "--series",
        csv.to_str().unwrap(),
        "dm",
        "--peers",
        "3",
        "--stages",
        "1s:20,2s:20",
    ]);
    let v = report(&out);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert_eq!(
        (v["planned"].as_u64(), v["messages"].as_u64()),
        (Some(50), Some(50)),
        "{v}"
    );
    assert_eq!(v["delivered"], 50, "{v}");
    assert_eq!(v["mode"], "staged");
    let rows = csv_rows(&csv);
    assert_eq!(v["series_rows"].as_u64(), Some(rows.len() as u64));
    assert!(rows.len() >= 3, "{rows:?}");
    assert_eq!(sum(&rows, "sent"), 50);
    assert_eq!(sum(&rows, "accepted"), 50);
    assert_eq!(sum(&rows, "delivered"), 50);
    assert_eq!(sum(&rows, "errors"), 0);
    let secs: Vec<u64> = rows.iter().map(|r| r["t_s"].parse().unwrap()).collect();
    assert_eq!(
        secs,
        (0..rows.len() as u64).collect::<Vec<_>>(),
        "one row a second"
    );
    // The ramp's first second sends a quarter of the hold's.
    assert_eq!(rows[0]["target"], "10.0");
    assert_eq!(rows[1]["target"], "20.0");
    assert_eq!(rows[0]["sent"], "10", "{rows:?}");
    assert!(rows[0]["connected"] == "3", "{rows:?}");
    assert!(
        rows.iter()
            .any(|r| r["e2e_p99_ms"].parse::<f64>().unwrap() > 0.0)
    );
}

#[test]
fn staged_churn_and_idle_follow_their_profiles_into_a_json_lines_series() {
    let b = Broker::start(&[]);
    let (url, pid) = (b.ws_url(), b.pid().to_string());
    let dir = TempDir::new("series");
    let jsonl = dir.path("churn.jsonl");
    let out = loadtest(&[
        "--url",
        &url,
        "--token",
        "t",
        "--json",
        "--series",
        jsonl.to_str().unwrap(),
        "churn",
        "--peers",
        "3",
        "--stages",
        "0s:10,2s:10",
    ]);
    let v = report(&out);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert_eq!(v["cycles"], 20, "{v}");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let handshakes: u64 = rows.iter().map(|r| r["handshakes"].as_u64().unwrap()).sum();
    assert_eq!(handshakes, 20, "{rows:?}");
    assert_eq!(rows[0]["target"], 10.0);

    // Up to 4 connections, hold, down to 2: closing our own is no drop.
    let out = loadtest(&[
        "--url",
        &url,
        "--token",
        "t",
        "--json",
        "--broker-pid",
        &pid,
        "idle",
        "--stages",
        "1s:4,1s:4,1s:2",
    ]);
    let v = report(&out);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert_eq!(v["connections"], 4, "{v}");
    assert_eq!(v["connected_at_end"], 2, "{v}");
    assert_eq!(v["dropped"], 0, "{v}");
    let stages = v["stage_results"].as_array().unwrap();
    assert_eq!(stages.len(), 3, "{v}");
    assert_eq!(stages[1]["connected"], 4, "{v}");
}

#[test]
fn the_operator_api_on_the_internal_port_is_reached_with_api_url() {
    let b = Broker::start(&[("BROKER_INTERNAL_PORT", "0")]);
    let url = b.ws_url();
    // The public port has no operator API: a clear error, not a run.
    let out = loadtest(&[
        "--url",
        &url,
        "--token",
        "t",
        "dm",
        "--peers",
        "2",
        "--messages",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--api-url"), "{}", stderr(&out));

    let api = format!("http://{}", b.internal.as_ref().unwrap());
    let out = loadtest(&[
        "--url",
        &url,
        "--api-url",
        &api,
        "--token",
        "t",
        "--json",
        "dm",
        "--peers",
        "2",
        "--messages",
        "3",
    ]);
    let v = report(&out);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert_eq!(v["delivered"], 6, "{v}");
    assert_eq!(v["cleanup"]["meshes_deleted"], 1, "{v}");
    let (status, listed) = b.api_json("GET", "/api/v1/meshes");
    assert_eq!(status, 200);
    assert_eq!(
        listed["meshes"],
        serde_json::json!([]),
        "no mesh is left: {listed}"
    );
}

#[test]
fn capacity_refusals_stop_the_run_with_the_reason_and_still_clean_up() {
    let b = Broker::start(&[("MAX_CONNECTIONS_PER_MESH", "2")]);
    let (url, pid) = (b.ws_url(), b.pid().to_string());
    let out = loadtest(&[
        "--url",
        &url,
        "--token",
        "t",
        "--timeout",
        "3",
        "--broker-pid",
        &pid,
        "idle",
        "--connections",
        "3",
        "--per-mesh",
        "3",
        "--hold",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused: capacity"),
        "{}",
        stderr(&out)
    );
    let (status, listed) = b.api_json("GET", "/api/v1/meshes");
    assert_eq!(status, 200);
    assert_eq!(listed["meshes"], serde_json::json!([]), "{listed}");
}
