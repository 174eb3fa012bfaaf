//! Traces: two replicas export spans over OTLP/HTTP to an in-process receiver, and a
//! direct message between them is one trace with spans from both.
#![allow(
    clippy::unwrap_used,
    reason = "tests fail loudly on the first surprise"
)]

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::pg;
use common::redis::RedisServer;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;

/// One received span: the exporting replica, its trace id and its name.
#[derive(Debug, Clone)]
struct Seen {
    instance: String,
    trace_id: String,
    name: String,
}

/// A minimal OTLP/HTTP traces endpoint: decodes every export and keeps the spans.
async fn receiver() -> (String, Arc<Mutex<Vec<Seen>>>) {
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
                                let instance = rs
                                    .resource
                                    .iter()
                                    .flat_map(|r| r.attributes.iter())
                                    .find(|kv| kv.key == "service.instance.id")
                                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                        AnyValue::StringValue(s) => Some(s.clone()),
                                        _ => None,
                                    })
                                    .unwrap_or_default();
                                for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                                    out.push(Seen {
                                        instance: instance.clone(),
                                        trace_id: hex::encode(&span.trace_id),
                                        name: span.name,
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

#[tokio::test]
async fn a_direct_message_between_replicas_is_one_trace() {
    let (endpoint, seen) = receiver().await;
    let db = pg::fresh_db().await;
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let redis_url = redis.url();
    let replica = |node: &str| {
        Broker::start(&[
            ("DATABASE_URL", db.as_str()),
            ("REDIS_URL", redis_url.as_str()),
            ("BROKER_NODE_ID", node),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ])
    };
    let (a, b) = (replica("a"), replica("b"));
    let mesh = a.create_mesh("traced", None);
    let alice = member(&a, &mesh, "alice", json!({}));
    let bob = member(&a, &mesh, "bob", json!({}));
    let (mut ac, _) = Client::join(&a.ws_url(), alice.hello(&mesh, json!({}))).await;
    let (mut bc, _) = Client::join(&b.ws_url(), bob.hello(&mesh, json!({}))).await;
    ac.send_msg(&bob.identity.pubkey, "now", "traced").await;
    assert_eq!(
        bc.expect_where("push", is_push).await["ciphertext"],
        "traced"
    );

    let (send, receive) = eventually("spans from both replicas share a trace", async || {
        let spans = seen.lock().unwrap().clone();
        spans
            .iter()
            .filter(|s| s.instance == "a" && s.name == "send")
            .find_map(|send| {
                spans
                    .iter()
                    .find(|r| {
                        r.instance == "b" && r.trace_id == send.trace_id && r.name == "bus.receive"
                    })
                    .map(|r| (send.clone(), r.clone()))
            })
    })
    .await;
    assert_eq!(send.trace_id, receive.trace_id);
    // The handshake and the push are spans too, on the replica that did them.
    eventually("handshake and push spans", async || {
        let spans = seen.lock().unwrap().clone();
        let has = |instance: &str, name: &str| {
            spans
                .iter()
                .any(|s| s.instance == instance && s.name == name)
        };
        (has("a", "handshake") && has("b", "handshake") && has("b", "push")).then_some(())
    })
    .await;
    assert_ne!(send.instance, receive.instance);
    // Log lines of the send carry its trace id.
    let log = a.log_text();
    assert!(
        log.contains(&format!("trace_id={}", send.trace_id)),
        "no log line with the trace id:\n{log}"
    );
}
