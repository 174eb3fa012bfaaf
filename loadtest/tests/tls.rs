//! TLS for real: HAProxy terminates TLS (a certificate from a CA made for the test) in
//! front of the real broker binary, and the load tester measures through it; a wrong CA
//! and a TLS URL on a plaintext port fail instead of falling back.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use common::{Broker, Haproxy, TempDir, loadtest, make_ca, make_server_pem, report, stderr};

#[test]
fn a_run_through_a_tls_terminating_proxy_works_and_a_wrong_ca_fails() {
    let b = Broker::start(&[]);
    let dir = TempDir::new("tls");
    let ca = make_ca(&dir.0, "ca");
    let other_ca = make_ca(&dir.0, "other");
    let pem = make_server_pem(&dir.0, "ca");
    let proxy = Haproxy::start(&dir.0, &pem, &b.addr);

    // wss:// for the peers and (derived from it) https:// for the operator API.
    let url = format!("wss://localhost:{}/ws", proxy.port);
    let out = loadtest(&[
        "--url",
        &url,
        "--ca",
        ca.to_str().unwrap(),
        "--token",
        "t",
        "--json",
        "dm",
        "--peers",
        "3",
        "--messages",
        "5",
    ]);
    let v = report(&out);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert_eq!(v["delivered"], 15, "{v}");
    assert_eq!(v["cleanup"]["errors"], serde_json::json!([]), "{v}");

    // An https:// URL by IP address (the certificate names 127.0.0.1 too).
    let url = format!("https://127.0.0.1:{}", proxy.port);
    let out = loadtest(&[
        "--url",
        &url,
        "--ca",
        ca.to_str().unwrap(),
        "--token",
        "t",
        "--json",
        "churn",
        "--peers",
        "2",
        "--rate",
        "10",
        "--duration",
        "0.5",
    ]);
    let v = report(&out);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert_eq!(v["handshakes_ok"], 5, "{v}");

    // The same proxy with a CA that did not sign its certificate: refused up front.
    let out = loadtest(&[
        "--url",
        &url,
        "--ca",
        other_ca.to_str().unwrap(),
        "--token",
        "t",
        "--json",
        "dm",
        "--peers",
        "2",
        "--messages",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        out.stdout.is_empty(),
        "no report for a run that never started"
    );
    let err = stderr(&out);
    assert!(err.contains("TLS") && err.contains("certificate"), "{err}");

    // And the system roots do not know the test CA either.
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
}

#[test]
fn a_tls_url_never_falls_back_to_plaintext() {
    let b = Broker::start(&[]);
    // The broker's own port speaks plaintext only.
    for url in [
        format!("wss://{}/ws", b.addr),
        format!("https://{}", b.addr),
    ] {
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
        assert_eq!(out.status.code(), Some(2), "{url}: {}", stderr(&out));
        assert!(stderr(&out).contains("TLS"), "{url}: {}", stderr(&out));
    }
    // Nothing reached the broker's operator API in plaintext: no mesh was created.
    let (status, listed) = b.api_json("GET", "/api/v1/meshes");
    if status == 200 {
        assert_eq!(listed["meshes"], serde_json::json!([]), "{listed}");
    }
    // --ca without any TLS URL is a mistake, not a silent plaintext run.
    let out = loadtest(&[
        "--url",
        &b.ws_url(),
        "--ca",
        "/nonexistent.pem",
        "--token",
        "t",
        "dm",
        "--peers",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--ca"), "{}", stderr(&out));
}
