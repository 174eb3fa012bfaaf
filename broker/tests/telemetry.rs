//! Traces and the telemetry counters, against an in-process OTLP/HTTP receiver: two
//! replicas export their spans to it, and every message is one trace from its `send` on
//! one replica to its `push` and `client_ack` on the other, whether the recipient was
//! online or drained it later.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::cluster::Cluster;
use common::pg;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::AnyValue as Any;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::json;

/// One received span.
#[derive(Debug, Clone)]
struct Seen {
    /// `service.instance.id` of the exporting replica.
    instance: String,
    /// `broker.node.id` of the exporting replica.
    node: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: SpanKind,
    attributes: BTreeMap<String, String>,
    /// `(trace id, span id)` of each link.
    links: Vec<(String, String)>,
}

impl Seen {
    fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

fn text(v: Option<&Any>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

type Spans = Arc<Mutex<Vec<Seen>>>;

/// A minimal OTLP/HTTP traces endpoint: decodes every export and keeps the spans.
async fn receiver() -> (String, Spans) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let store = store.clone();
                    async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        if let Ok(export) = ExportTraceServiceRequest::decode(body) {
                            let mut out = store.lock().unwrap();
                            for rs in export.resource_spans {
                                let resource = |key: &str| {
                                    text(
                                        rs.resource
                                            .iter()
                                            .flat_map(|r| r.attributes.iter())
                                            .find(|kv| kv.key == key)
                                            .and_then(|kv| kv.value.as_ref()),
                                    )
                                };
                                let (instance, node) =
                                    (resource("service.instance.id"), resource("broker.node.id"));
                                for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                                    out.push(Seen {
                                        instance: instance.clone(),
                                        node: node.clone(),
                                        trace_id: hex::encode(&span.trace_id),
                                        span_id: hex::encode(&span.span_id),
                                        parent: hex::encode(&span.parent_span_id),
                                        name: span.name.clone(),
                                        kind: span.kind(),
                                        attributes: span
                                            .attributes
                                            .iter()
                                            .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                                            .collect(),
                                        links: span
                                            .links
                                            .iter()
                                            .map(|l| {
                                                (hex::encode(&l.trace_id), hex::encode(&l.span_id))
                                            })
                                            .collect(),
                                    });
                                }
                            }
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, seen)
}

/// A cluster whose replicas export to `endpoint` every 100 ms.
async fn traced_cluster(endpoint: &str) -> Cluster {
    Cluster::new(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await
}

fn spans(seen: &Spans) -> Vec<Seen> {
    seen.lock().unwrap().clone()
}

/// The spans of one trace, once `want` spans with these `(node, name)` are in it.
async fn trace_with(seen: &Spans, trace_id: &str, want: &[(&str, &str)]) -> Vec<Seen> {
    eventually(&format!("spans {want:?} in trace {trace_id}"), async || {
        let trace: Vec<Seen> = spans(seen)
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        want.iter()
            .all(|(node, name)| trace.iter().any(|s| s.node == *node && s.name == *name))
            .then_some(trace)
    })
    .await
}

/// The `send` span of the message `message_id`.
async fn send_span(seen: &Spans, message_id: &str) -> Seen {
    eventually("the send span", async || {
        spans(seen)
            .into_iter()
            .find(|s| s.name == "send" && s.attr("messaging.message.id") == message_id)
    })
    .await
}

fn one<'a>(trace: &'a [Seen], node: &str, name: &str) -> &'a Seen {
    let found: Vec<&Seen> = trace
        .iter()
        .filter(|s| s.node == node && s.name == name)
        .collect();
    assert_eq!(found.len(), 1, "one {name} on {node} in {trace:#?}");
    found[0]
}

#[tokio::test]
async fn a_direct_message_between_replicas_is_one_trace_from_send_to_client_ack() {
    let (endpoint, seen) = receiver().await;
    let c = traced_cluster(&endpoint).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("traced", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    // Bob's post-attach drain is over once his session answers: the message below is
    // pushed by its doorbell alone, one push.
    bc.request(json!({"type": "list_peers"})).await;
    let ack = ac.send_msg(&bob.identity.pubkey, "now", "traced").await;
    let message_id = ack["messageId"].as_str().unwrap().to_string();
    let push = bc.expect_where("push", is_push).await;
    assert_eq!(push["ciphertext"], "traced");
    bc.send(client_ack(&message_id)).await;

    let send = send_span(&seen, &message_id).await;
    let trace = trace_with(
        &seen,
        &send.trace_id,
        &[
            ("a", "send"),
            ("a", "bus.publish"),
            ("b", "bus.receive"),
            ("b", "push"),
            ("b", "client_ack"),
        ],
    )
    .await;
    // The send is the root of the message's trace.
    assert_eq!(send.node, "a");
    assert!(send.parent.is_empty(), "{send:?}");
    assert_eq!(send.kind, SpanKind::Server);
    // send → bus.publish (PRODUCER) → bus.receive (CONSUMER, on the other replica).
    let publish = trace
        .iter()
        .find(|s| s.name == "bus.publish" && s.attr("kind") == "doorbell")
        .unwrap();
    assert_eq!(publish.kind, SpanKind::Producer);
    assert_eq!(publish.parent, send.span_id);
    let receive = trace
        .iter()
        .find(|s| s.name == "bus.receive" && s.node == "b" && s.attr("kind") == "doorbell")
        .unwrap();
    assert_eq!(receive.kind, SpanKind::Consumer);
    assert_eq!(receive.parent, publish.span_id);
    // push and client_ack on the recipient's replica, in the send's trace.
    let pushed = one(&trace, "b", "push");
    assert_eq!(pushed.kind, SpanKind::Producer);
    assert_eq!(pushed.parent, send.span_id);
    assert_eq!(pushed.attr("messaging.message.id"), message_id);
    let acked = one(&trace, "b", "client_ack");
    assert_eq!(acked.kind, SpanKind::Server);
    assert_eq!(acked.attr("messaging.operation.type"), "settle");
    // Semantic-convention attributes, and the mesh on every message span.
    for s in [&send, publish, receive, pushed, acked] {
        assert_eq!(s.attr("mesh.id"), mesh, "{s:?}");
        assert!(!s.attr("messaging.system").is_empty(), "{s:?}");
    }
    assert_eq!(send.attr("messaging.destination.name"), "direct");
    assert_eq!(publish.attr("messaging.system"), "redis");
    // The queued row was written by a PostgreSQL statement span of the same trace.
    assert!(
        trace
            .iter()
            .any(|s| s.node == "a" && s.attr("db.system.name") == "postgresql"),
        "no PostgreSQL span in the send's trace: {trace:#?}"
    );
    // service.instance.id is the per-start instance id; the node id is its own attribute.
    assert!(send.instance.starts_with("a~"), "{send:?}");
    assert!(pushed.instance.starts_with("b~"), "{pushed:?}");

    // Per-message spans link to the connection span; they are not its children, and the
    // connection's trace holds no message span.
    ac.close().await;
    bc.close().await;
    let conns = eventually("both connection spans", async || {
        let all = spans(&seen);
        let conn = |node: &str| {
            all.iter()
                .find(|s| s.node == node && s.name == "conn")
                .cloned()
        };
        Some((conn("a")?, conn("b")?))
    })
    .await;
    let (a_conn, b_conn) = conns;
    assert!(a_conn.parent.is_empty() && b_conn.parent.is_empty());
    let link_to = |s: &Seen, conn: &Seen| {
        s.links
            .contains(&(conn.trace_id.clone(), conn.span_id.clone()))
    };
    assert!(link_to(&send, &a_conn), "send links to alice's connection");
    assert!(link_to(pushed, &b_conn), "push links to bob's connection");
    assert!(
        link_to(acked, &b_conn),
        "client_ack links to bob's connection"
    );
    // (The handshake's own work stays in it: its statements and the `peer_joined` it
    // announces, pushed as a system event.)
    let in_conn_traces: Vec<Seen> = spans(&seen)
        .into_iter()
        .filter(|s| s.trace_id == a_conn.trace_id || s.trace_id == b_conn.trace_id)
        .collect();
    for s in &in_conn_traces {
        let message_span = matches!(s.name.as_str(), "send" | "client_ack" | "drain")
            || (s.name == "push" && s.attr("messaging.destination.name") != "system");
        assert!(
            !message_span,
            "a message span inside a connection trace: {s:#?}"
        );
    }
    // Log lines of the send carry its trace id.
    let log = a.log_text();
    assert!(
        log.contains(&format!("trace_id={}", send.trace_id)),
        "no log line with the trace id:\n{log}"
    );
}

#[tokio::test]
async fn a_message_drained_later_on_another_replica_is_pushed_in_the_send_trace() {
    let (endpoint, seen) = receiver().await;
    let c = traced_cluster(&endpoint).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("offline", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    // Bob is offline: the message waits in PostgreSQL with its send's trace context.
    let ack = ac.send_msg(&bob.identity.pubkey, "now", "later").await;
    assert_eq!(ack["queued"], true, "{ack}");
    let message_id = ack["messageId"].as_str().unwrap().to_string();
    let send = send_span(&seen, &message_id).await;
    // The row holds the send span's context.
    assert_eq!(
        queued_trace_context(&c.db, &message_id).await,
        Some(format!("00-{}-{}-01", send.trace_id, send.span_id))
    );

    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    let push = bc.expect_where("push", is_push).await;
    assert_eq!(push["messageId"], message_id.as_str());
    bc.send(client_ack(&message_id)).await;

    let trace = trace_with(
        &seen,
        &send.trace_id,
        &[("a", "send"), ("b", "push"), ("b", "client_ack")],
    )
    .await;
    let pushed = one(&trace, "b", "push");
    assert_eq!(pushed.parent, send.span_id, "the push continues the send");
    assert_eq!(pushed.attr("mesh.id"), mesh);
    // The drain that claimed it is a trace of its own, linked from the push.
    let drain = eventually("the drain span", async || {
        spans(&seen).into_iter().find(|s| {
            s.node == "b"
                && s.name == "drain"
                && pushed
                    .links
                    .contains(&(s.trace_id.clone(), s.span_id.clone()))
        })
    })
    .await;
    assert_ne!(drain.trace_id, send.trace_id);
    assert!(drain.parent.is_empty(), "{drain:?}");
}

/// The `trace_context` of a queued row.
async fn queued_trace_context(db: &str, message_id: &str) -> Option<String> {
    pg::connect(db)
        .await
        .query_one(
            "SELECT trace_context FROM message_queue WHERE id = $1",
            &[&message_id],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn without_traces_a_queued_message_carries_no_trace_context() {
    let db = pg::fresh_db().await;
    let b = Broker::start(&[("DATABASE_URL", db.as_str())]);
    let mesh = b.create_mesh("untraced", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let bob = member(&b, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
    let ack = ac.send_msg(&bob.identity.pubkey, "now", "dark").await;
    assert_eq!(ack["queued"], true, "{ack}");
    let id = ack["messageId"].as_str().unwrap();
    assert_eq!(queued_trace_context(&db, id).await, None);
    // And it is delivered as any other.
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    assert_eq!(bc.expect_where("push", is_push).await["messageId"], id);
}

#[tokio::test]
async fn a_broadcast_has_one_push_span_per_replica_with_its_recipient_count() {
    let (endpoint, seen) = receiver().await;
    let c = traced_cluster(&endpoint).await;
    let (a, b) = (c.replica("a"), c.replica("b"));
    let mesh = a.create_mesh("fanout", None);
    let names = ["alice", "carol", "bob", "dave"];
    let members: Vec<Member> = names
        .iter()
        .map(|n| member(&a, &mesh, n, json!({})))
        .collect();
    let mut clients = Vec::new();
    for (i, m) in members.iter().enumerate() {
        // alice and carol on a, bob and dave on b.
        let url = if i < 2 { a.ws_url() } else { b.ws_url() };
        clients.push(Client::join(&url, m.hello(&mesh, json!({}))).await.0);
    }
    let ack = clients[0].send_msg("*", "now", "to all").await;
    let message_id = ack["messageId"].as_str().unwrap().to_string();
    for c in &mut clients[1..] {
        assert_eq!(
            c.expect_where("push", is_push).await["ciphertext"],
            "to all"
        );
    }
    let send = send_span(&seen, &message_id).await;
    assert_eq!(send.attr("messaging.destination.name"), "fanout");
    let trace = trace_with(&seen, &send.trace_id, &[("a", "push"), ("b", "push")]).await;
    let (on_a, on_b) = (one(&trace, "a", "push"), one(&trace, "b", "push"));
    assert_eq!(on_a.attr("push.recipients"), "1", "{on_a:?}");
    assert_eq!(on_b.attr("push.recipients"), "2", "{on_b:?}");
    assert_eq!(on_a.attr("push.addressed"), "3");
    for s in [on_a, on_b] {
        assert_eq!(s.kind, SpanKind::Producer);
        assert_eq!(s.attr("mesh.id"), mesh);
    }
    let receive = one(&trace, "b", "bus.receive");
    assert_eq!(
        on_b.parent, receive.span_id,
        "b's push follows its bus.receive"
    );
}

#[tokio::test]
async fn http_requests_are_server_spans_of_their_own() {
    let (endpoint, seen) = receiver().await;
    let b = Broker::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    let (status, _) = b.api("GET", "/api/v1/meshes", None);
    assert_eq!(status, 200);
    let span = eventually("an HTTP span", async || {
        spans(&seen)
            .into_iter()
            .find(|s| s.kind == SpanKind::Server && s.attr("http.route") == "/api/v1/meshes")
    })
    .await;
    assert_eq!(span.attr("http.request.method"), "GET");
    assert_eq!(span.attr("http.response.status_code"), "200");
    assert!(span.parent.is_empty());
}

#[tokio::test]
async fn labelled_counters_show_zero_before_their_first_event() {
    let b = Broker::start(&[]);
    let text = b.metrics();
    for series in [
        r#"broker_connections_rejected_total{reason="capacity"}"#,
        r#"broker_connections_rejected_total{reason="bad_signature"}"#,
        r#"broker_messages_rejected_total{reason="rate_limit"}"#,
        r#"broker_messages_rejected_total{reason="grant"}"#,
        r#"broker_messages_dropped_by_grant_total{cap="dm"}"#,
        r#"broker_messages_dropped_by_grant_total{cap="broadcast"}"#,
        r#"broker_messages_routed_total{priority="now"}"#,
        r#"broker_messages_routed_total{priority="low"}"#,
        r#"broker_hook_requests_rejected_total{reason="rate_limit_key"}"#,
        r#"broker_worker_restarts_total{worker="dispatcher"}"#,
        r#"broker_otel_spans_dropped_total{reason="export_failed"}"#,
        r#"broker_otel_spans_dropped_total{reason="queue_full"}"#,
        "broker_otel_export_failures_total",
    ] {
        assert_eq!(
            metric_value(&text, series),
            Some(0.0),
            "{series} is not at 0 before its first event:\n{text}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_otlp_endpoint_is_counted_and_warned_about_once() {
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let b = Broker::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{closed}")),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ]);
    let mesh = b.create_mesh("dark", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    // Each handshake (and each request) makes spans the exporter cannot deliver.
    let text = eventually("two failed exports", async || {
        let (c, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
        c.close().await;
        let text = b.metrics();
        (metric(&text, "broker_otel_export_failures_total") >= 2.0).then_some(text)
    })
    .await;
    assert!(
        metric(
            &text,
            r#"broker_otel_spans_dropped_total{reason="export_failed"}"#
        ) >= 2.0,
        "{text}"
    );
    // One warning, not one per failure.
    let log = b.log_text();
    assert_eq!(
        log.matches("trace export failed").count(),
        1,
        "the warning is rate-limited:\n{log}"
    );
}

#[tokio::test]
async fn spans_beyond_the_export_queue_are_dropped_and_counted() {
    // A collector that accepts connections and never answers: the first export hangs, and
    // the spans after it wait until the queue is full.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            keep.lock().unwrap().push(stream);
        }
    });
    let b = Broker::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "4"),
    ]);
    let mesh = b.create_mesh("slow", None);
    let alice = member(&b, &mesh, "alice", json!({}));
    let dropped = r#"broker_otel_spans_dropped_total{reason="queue_full"}"#;
    eventually("spans dropped at the full queue", async || {
        let (c, _) = Client::join(&b.ws_url(), alice.hello(&mesh, json!({}))).await;
        c.close().await;
        (metric(&b.metrics(), dropped) > 0.0).then_some(())
    })
    .await;
    // The queue is full because the export hangs, not because none was attempted.
    eventually("the exporter's connection", async || {
        (!held.lock().unwrap().is_empty()).then_some(())
    })
    .await;
}
