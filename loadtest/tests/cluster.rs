//! Two broker replicas over one PostgreSQL database and one Redis: a staged `failover`
//! run SIGKILLs one of them, passes (its disconnects are the point), writes its series,
//! and leaves no mesh behind on the survivor.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use common::{Cluster, TempDir, loadtest, report, stderr};

#[test]
fn a_staged_failover_over_two_replicas_passes_and_cleans_up_through_the_survivor() {
    let cluster = Cluster::start();
    let a = cluster.replica("a");
    let b = cluster.replica("b");
    let dir = TempDir::new("cluster");
    let csv = dir.path("failover.csv");
    let (pa, pb) = (a.pid().to_string(), b.pid().to_string());
    // The victim is the first --url, through which the meshes were created: the
    // clean-up has to find the other replica's operator API.
    let out = loadtest(&[
        "--url",
        &a.ws_url(),
        "--url",
        &b.ws_url(),
        "--token",
        "t",
        "--json",
        "--broker-pid",
        &pa,
        "--broker-pid",
        &pb,
        "--series",
        csv.to_str().unwrap(),
        "failover",
        "--peers",
        "10",
        "--per-mesh",
        "10",
        "--stages",
        "0s:40,4s:40",
        "--kill-pid",
        &pa,
        "--kill-after",
        "1.5",
    ]);
    let v = report(&out);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert_eq!(
        (v["planned"].as_u64(), v["unsent"].as_u64()),
        (Some(160), Some(0)),
        "{v}"
    );
    assert_eq!(v["lost_acked"], 0, "{v}");
    assert!(v["peers_dropped"].as_u64().unwrap() > 0, "{v}");
    assert!(
        v["dropped"].as_u64().unwrap() > 0,
        "disconnects happened and were allowed: {v}"
    );
    assert_eq!(v["cleanup"]["meshes_deleted"], 1, "{v}");
    assert_eq!(v["cleanup"]["members_deleted"], 10, "{v}");
    let (status, listed) = b.api_json("GET", "/api/v1/meshes");
    assert_eq!(status, 200);
    assert_eq!(listed["meshes"], serde_json::json!([]), "{listed}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert!(rows.len() >= 4, "{text}");
    let errors: u64 = rows
        .iter()
        .map(|r| r.split(',').nth(8).unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(errors > 0, "the kill shows in the series: {text}");
}
