//! The handlers of REST v1 (`rest.md` §4), one per [`Op`]. They call the service layer
//! (`service::topics`, `service::queue`, …) with the issuer's principal: the same checks,
//! rate limits, audit and metrics as the WebSocket.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::routes::Op;
use super::{Body, Call, RestError, RestResult, json_reply};
use crate::ids::{iso8601_ms, now_ms};
use crate::protocol::Priority;
use crate::service::apikeys::parse_iso_ms;
use crate::service::send::SendError;
use crate::service::topics::{self, TopicError};
use crate::service::{self, Principal};
use crate::store::topics::{MarkWhich, NotificationView, Topic, TopicMessage};
use crate::store::{Member, QueuedMessage};

/// Who counts as `via:"rest"` in `/peers` (`rest.md` §4.9).
pub const REST_PEER_WINDOW_MS: i64 = 5 * 60 * 1000;

/// A route without the key layer.
pub fn unauthenticated(op: Op) -> Response<Body> {
    match op {
        Op::OpenApi => json_reply(StatusCode::OK, &super::openapi::document()),
        _ => json_reply(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
    }
}

/// Runs the route's handler.
pub async fn run(op: Op, call: Call) -> Result<Response<Body>, RestError> {
    if op == Op::TopicStream {
        return stream(&call).await;
    }
    let value = match op {
        Op::PostMessage => post_message(&call).await,
        Op::ListTopics => list_topics(&call).await,
        Op::TopicMessages => topic_messages(&call).await,
        Op::MarkRead => mark_read(&call).await,
        Op::TopicKey => topic_key(&call).await,
        Op::ClaimKey => claim_key(&call).await,
        Op::PendingSeals => pending_seals(&call).await,
        Op::Seal => seal(&call).await,
        Op::Members => members(&call).await,
        Op::Peers => peers(&call).await,
        Op::Notifications => notifications(&call).await,
        Op::NotificationsRead => notifications_read(&call).await,
        Op::PeerPubkey => peer_pubkey(&call).await,
        Op::MeWorkspace => me_workspace(&call).await,
        Op::MeTopics => me_topics(&call).await,
        Op::MeNotifications => me_notifications(&call).await,
        Op::MeActivity => me_activity(&call).await,
        Op::MeSearch => me_search(&call).await,
        Op::MeTasks => me_tasks(&call).await,
        Op::MeState => me_state(&call).await,
        Op::MeMemory => me_memory(&call).await,
        Op::Inbox => inbox(&call).await,
        Op::InboxAck => inbox_ack(&call).await,
        Op::TopicStream | Op::OpenApi => Ok(super::openapi::document()),
    }?;
    Ok(json_reply(StatusCode::OK, &value))
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A topic refusal as REST answers it (`rest.md` §4).
fn topic_error(e: TopicError) -> RestError {
    let st = status(e.http_status());
    match e {
        TopicError::Invalid(m) => RestError::invalid("invalid_args", m),
        TopicError::NotFound { topic } => {
            RestError::route_with(st, json!({"error": "topic_not_found", "topic": topic}))
        }
        TopicError::Unencrypted { ref topic } => RestError::route_with(
            st,
            json!({"error": e.code(), "topic": topic, "hint": e.message()}),
        ),
        TopicError::NotSealed { ref topic } => RestError::route_with(
            st,
            json!({"error": e.code(), "topic": topic, "hint": e.message()}),
        ),
        TopicError::AlreadyEncrypted {
            ref topic,
            ref sender_pubkey,
        } => RestError::route_with(
            st,
            json!({"error": e.code(), "topic": topic, "senderPubkey": sender_pubkey}),
        ),
        TopicError::Unavailable(m) => RestError::unavailable(m),
        other => RestError::route_with(
            st,
            json!({"error": other.code(), "message": other.message()}),
        ),
    }
}

fn send_error(e: SendError) -> RestError {
    match e {
        SendError::TopicNotFound => RestError::route(StatusCode::NOT_FOUND, "topic_not_found"),
        SendError::RateLimited { .. } => RestError::route_with(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": "rate_limited", "message": e.message()}),
        ),
        SendError::TooLarge => RestError::route_with(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": "payload_too_large", "message": e.message()}),
        ),
        SendError::Revoked { .. } => RestError::Framework {
            status: StatusCode::UNAUTHORIZED,
            code: "error.api_key_invalid".into(),
            message: "error.api_key_invalid".into(),
        },
        SendError::TopicRefused(m) => RestError::route_with(
            StatusCode::FORBIDDEN,
            json!({"error": "forbidden", "message": m}),
        ),
        SendError::Unavailable(m) | SendError::OutcomeUnknown(m) => RestError::unavailable(m),
        other => RestError::route_with(
            StatusCode::BAD_REQUEST,
            json!({"error": other.metric_label(), "message": other.message()}),
        ),
    }
}

/// The `{name}` topic of the call, resolved by name (404 `topic_not_found`).
async fn path_topic(call: &Call, p: &Principal) -> Result<Topic, RestError> {
    let name = call.params.first().map(String::as_str).unwrap_or_default();
    topics::resolve_name(&call.svc, p, name)
        .await
        .map_err(topic_error)
}

/// The principal reads act as: the issuer, else (a legacy key without one) the mesh's
/// oldest non-revoked member, as the reference does for reads.
async fn reader(call: &Call) -> Result<Principal, RestError> {
    if let Some(p) = &call.principal {
        return Ok(p.clone());
    }
    let members = call
        .svc
        .store()
        .members(&call.key.mesh.id)
        .await
        .map_err(RestError::unavailable)?;
    let oldest = members
        .into_iter()
        .filter(|m| m.revoked_at.is_none())
        .min_by_key(|m| m.created_at)
        .ok_or_else(|| RestError::route(StatusCode::INTERNAL_SERVER_ERROR, "no_mesh_member"))?;
    let mut v = call.key.clone();
    v.issuer = Some(oldest);
    super::principal_of(&v)
        .ok_or_else(|| RestError::route(StatusCode::INTERNAL_SERVER_ERROR, "no_mesh_member"))
}

/// A stored message as `GET /topics/:name/messages` and the stream show it
/// (`senderPubkey` = the member key).
pub fn message_json(m: &TopicMessage) -> Value {
    json!({
        "id": m.id,
        "senderMemberId": m.sender_member_id,
        "senderPubkey": m.sender_member_pubkey,
        "senderName": m.sender_name,
        "nonce": m.nonce,
        "ciphertext": m.ciphertext,
        "bodyVersion": m.body_version,
        "replyToId": m.reply_to_id,
        "createdAt": iso8601_ms(m.created_at),
    })
}

fn str_field<'a>(
    body: &'a Value,
    name: &str,
    min: usize,
    max: usize,
) -> Result<&'a str, RestError> {
    match body.get(name) {
        None | Some(Value::Null) => Err(RestError::invalid(
            "invalid_type",
            format!("{name}: Required"),
        )),
        Some(Value::String(s)) if s.chars().count() < min => Err(RestError::invalid(
            "too_small",
            format!("{name}: String must contain at least {min} character(s)"),
        )),
        Some(Value::String(s)) if s.chars().count() > max => Err(RestError::invalid(
            "too_big",
            format!("{name}: String must contain at most {max} character(s)"),
        )),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(RestError::invalid(
            "invalid_type",
            format!("{name}: Expected string"),
        )),
    }
}

fn opt_str_field<'a>(
    body: &'a Value,
    name: &str,
    min: usize,
    max: usize,
) -> Result<Option<&'a str>, RestError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => str_field(body, name, min, max).map(Some),
    }
}

fn object_body(call: &Call) -> Result<&Value, RestError> {
    if call.body.is_object() {
        Ok(&call.body)
    } else {
        Err(RestError::invalid("invalid_type", "body: Expected object"))
    }
}

fn query_limit(call: &Call, name: &str, default: i64) -> Result<i64, RestError> {
    match call.query(name) {
        None => Ok(default),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=200).contains(&n) => Ok(n),
            Ok(_) => Err(RestError::invalid(
                "too_big",
                format!("{name}: Number must be between 1 and 200"),
            )),
            Err(_) => Err(RestError::invalid(
                "invalid_type",
                format!("{name}: Expected number"),
            )),
        },
    }
}

/// `since`-style ISO query parameter; `Err(())` when present and unparsable.
fn query_time(call: &Call, name: &str) -> Result<Option<i64>, ()> {
    match call.query(name) {
        None | Some("") => Ok(None),
        Some(v) => parse_iso_ms(v).map(Some).ok_or(()),
    }
}

async fn post_message(call: &Call) -> RestResult {
    let body = object_body(call)?;
    let topic_name = str_field(body, "topic", 1, 64)?;
    let ciphertext = str_field(body, "ciphertext", 1, usize::MAX)?;
    let nonce = str_field(body, "nonce", 1, usize::MAX)?;
    let priority = match opt_str_field(body, "priority", 1, 8)? {
        None | Some("next") => Priority::Next,
        Some("now") => Priority::Now,
        Some("low") => Priority::Low,
        Some(_) => {
            return Err(RestError::invalid(
                "invalid_enum_value",
                "priority: Invalid enum value. Expected 'now' | 'next' | 'low'",
            ));
        }
    };
    let body_version = match body.get("bodyVersion") {
        None | Some(Value::Null) => None,
        Some(v) if v.as_u64() == Some(1) || v.as_u64() == Some(2) => v.as_u64().map(|n| n as u8),
        Some(_) => {
            return Err(RestError::invalid(
                "invalid_union",
                "bodyVersion: Expected 1 or 2",
            ));
        }
    };
    let mentions = match body.get("mentions") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if items.len() <= 16 => {
            let mut out = Vec::new();
            for item in items {
                match item.as_str() {
                    Some(s) if (1..=64).contains(&s.chars().count()) => out.push(s.to_string()),
                    _ => {
                        return Err(RestError::invalid(
                            "invalid_type",
                            "mentions: each mention is a string of 1–64 characters",
                        ));
                    }
                }
            }
            Some(out)
        }
        Some(_) => {
            return Err(RestError::invalid(
                "too_big",
                "mentions: Array must contain at most 16 element(s)",
            ));
        }
    };
    let reply_to_id = opt_str_field(body, "replyToId", 1, 128)?.map(str::to_string);
    if !call.key.admits(topic_name) {
        return Err(super::out_of_scope(&call.node));
    }
    let p = call.issuer()?;
    let topic = topics::resolve_name(&call.svc, p, topic_name)
        .await
        .map_err(topic_error)?;
    let req = topics::PostRequest {
        topic_id: topic.id.clone(),
        nonce: nonce.to_string(),
        ciphertext: ciphertext.to_string(),
        priority,
        body_version,
        mentions,
        reply_to_id,
    };
    let out = topics::post(&call.svc, p, req).await.map_err(send_error)?;
    // Other replicas' streams are woken by the post's `Deliver` (or, with no live
    // recipient, by the `topic_posted` one the service publishes).
    super::sse::wake(&out.topic.id);
    let mut reply = json!({
        "messageId": out.message.id,
        "historyId": out.message.id,
        "queueId": out.message.queue_id,
        "topic": out.topic.name,
        "topicId": out.topic.id,
        "notifications": out.notifications,
        "bodyVersion": out.message.body_version,
    });
    if let Some(r) = &out.message.reply_to_id {
        reply["replyToId"] = json!(r);
    }
    Ok(reply)
}

async fn list_topics(call: &Call) -> RestResult {
    let p = reader(call).await?;
    let list = topics::list(&call.svc, &p).await.map_err(topic_error)?;
    let with_unread = call.principal.is_some();
    let rows: Vec<Value> = list
        .iter()
        .filter(|t| call.key.admits(&t.topic.name))
        .map(|t| {
            json!({
                "id": t.topic.id,
                "name": t.topic.name,
                "description": t.topic.description,
                "visibility": t.topic.visibility,
                "createdAt": iso8601_ms(t.topic.created_at),
                "unread": if with_unread { t.unread } else { 0 },
            })
        })
        .collect();
    Ok(json!({ "topics": rows }))
}

async fn topic_messages(call: &Call) -> RestResult {
    let limit = query_limit(call, "limit", 50)?;
    let p = reader(call).await?;
    let topic = path_topic(call, &p).await?;
    let before = call.query("before").filter(|b| !b.is_empty());
    let msgs = topics::history(&call.svc, &p, &topic, Some(limit), before)
        .await
        .map_err(topic_error)?;
    Ok(json!({
        "topic": topic.name,
        "topicId": topic.id,
        "messages": msgs.iter().map(message_json).collect::<Vec<_>>(),
    }))
}

async fn stream(call: &Call) -> Result<Response<Body>, RestError> {
    let p = reader(call).await?;
    let topic = path_topic(call, &p).await?;
    // The same read rule as the history (a private topic's members and admins only).
    topics::history(&call.svc, &p, &topic, Some(1), None)
        .await
        .map_err(topic_error)?;
    let last = call
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.len() <= 128);
    let body = super::sse::open(
        &call.node,
        call.svc.clone(),
        call.key.key.id.clone(),
        topic,
        last,
        message_json,
    )
    .await
    .map_err(|r| {
        call.node.metrics.refuse_rest("too_many_streams");
        match r {
            super::sse::Refused::PerKey => {
                RestError::route(StatusCode::TOO_MANY_REQUESTS, "too_many_streams")
            }
            super::sse::Refused::PerReplica => {
                RestError::route(StatusCode::SERVICE_UNAVAILABLE, "too_many_streams")
            }
        }
    })?;
    let mut resp = Response::new(Body::Stream(body));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("connection", HeaderValue::from_static("keep-alive"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

async fn mark_read(call: &Call) -> RestResult {
    let p = call.issuer()?;
    let topic = path_topic(call, p).await?;
    let at = topics::mark_read(&call.svc, p, &topic, true)
        .await
        .map_err(topic_error)?
        .unwrap_or_else(now_ms);
    Ok(json!({"topic": topic.name, "topicId": topic.id, "readAt": iso8601_ms(at)}))
}

async fn topic_key(call: &Call) -> RestResult {
    let p = call.issuer()?;
    let topic = path_topic(call, p).await?;
    let k = topics::key(&call.svc, p, &topic)
        .await
        .map_err(topic_error)?;
    Ok(json!({
        "topic": topic.name,
        "topicId": topic.id,
        "encryptedKey": k.sealed.encrypted_key,
        "nonce": k.sealed.nonce,
        "senderPubkey": k.sender_pubkey,
        "createdAt": iso8601_ms(k.sealed.sealed_at),
    }))
}

async fn claim_key(call: &Call) -> RestResult {
    let body = object_body(call)?;
    let pubkey = str_field(body, "encryptedKeyPubkey", 64, 64)?;
    let copy = topics::SealedCopy {
        encrypted_key: str_field(body, "encryptedKey", 1, 4096)?.to_string(),
        nonce: str_field(body, "nonce", 1, 64)?.to_string(),
    };
    let p = call.issuer()?;
    let topic = path_topic(call, p).await?;
    let sender = topics::claim_key(&call.svc, p, &topic, pubkey, copy)
        .await
        .map_err(topic_error)?;
    Ok(json!({
        "topic": topic.name,
        "topicId": topic.id,
        "senderPubkey": sender,
        "memberId": p.member.id,
        "claimed": true,
    }))
}

async fn pending_seals(call: &Call) -> RestResult {
    let p = reader(call).await?;
    let topic = path_topic(call, &p).await?;
    let ps = topics::pending_seals(&call.svc, &p, &topic)
        .await
        .map_err(topic_error)?;
    Ok(json!({
        "topic": topic.name,
        "topicId": topic.id,
        "senderPubkey": ps.sender_pubkey,
        "pending": ps.pending.iter().map(|m| json!({
            "memberId": m.id, "pubkey": m.pubkey, "displayName": m.display_name,
        })).collect::<Vec<_>>(),
    }))
}

async fn seal(call: &Call) -> RestResult {
    let body = object_body(call)?;
    let member_id = str_field(body, "memberId", 1, 128)?;
    let copy = topics::SealedCopy {
        encrypted_key: str_field(body, "encryptedKey", 1, 4096)?.to_string(),
        nonce: str_field(body, "nonce", 1, 64)?.to_string(),
    };
    let p = reader(call).await?;
    let topic = path_topic(call, &p).await?;
    let at = topics::seal(&call.svc, &p, &topic, member_id, copy)
        .await
        .map_err(topic_error)?;
    Ok(json!({
        "topic": topic.name,
        "topicId": topic.id,
        "memberId": member_id,
        "sealedAt": iso8601_ms(at),
    }))
}

/// The mesh's live presences, newest first per member.
async fn live_by_member(
    call: &Call,
    mesh_id: &str,
) -> Result<HashMap<String, crate::cluster::presence::PresenceRecord>, RestError> {
    let records = call
        .svc
        .presence()
        .list(mesh_id)
        .await
        .map_err(RestError::unavailable)?;
    let mut by: HashMap<String, crate::cluster::presence::PresenceRecord> = HashMap::new();
    for r in records.into_iter().filter(|r| r.is_live()) {
        match by.get(&r.member_id) {
            Some(old) if old.connected_at >= r.connected_at => {}
            _ => {
                by.insert(r.member_id.clone(), r);
            }
        }
    }
    Ok(by)
}

async fn mesh_members(call: &Call, mesh_id: &str) -> Result<Vec<Member>, RestError> {
    let mut members: Vec<Member> = call
        .svc
        .store()
        .members(mesh_id)
        .await
        .map_err(RestError::unavailable)?
        .into_iter()
        .filter(|m| m.revoked_at.is_none())
        .collect();
    // Oldest first; members enrolled in one millisecond by name (ids are random, so they
    // would order them differently on every run).
    members.sort_by(|a, b| {
        (a.created_at, &a.display_name, &a.id).cmp(&(b.created_at, &b.display_name, &b.id))
    });
    Ok(members)
}

async fn members(call: &Call) -> RestResult {
    let mesh_id = &call.key.mesh.id;
    let members = mesh_members(call, mesh_id).await?;
    let live = live_by_member(call, mesh_id).await?;
    let rows: Vec<Value> = members
        .iter()
        .map(|m| {
            let r = live.get(&m.id);
            json!({
                "memberId": m.id,
                "pubkey": m.pubkey,
                "displayName": m.display_name,
                "role": m.role.as_str(),
                "isHuman": m.user_id.is_some(),
                "joinedAt": iso8601_ms(m.created_at),
                "online": r.is_some(),
                "status": r.map(|r| r.status.as_str()).unwrap_or("offline"),
                "summary": r.and_then(|r| r.summary.clone()),
            })
        })
        .collect();
    Ok(json!({ "members": rows }))
}

async fn peers(call: &Call) -> RestResult {
    let mesh_id = &call.key.mesh.id;
    let members = mesh_members(call, mesh_id).await?;
    let live = live_by_member(call, mesh_id).await?;
    let recent = call
        .svc
        .store()
        .recent_key_issuers(mesh_id, now_ms() - REST_PEER_WINDOW_MS)
        .await
        .map_err(RestError::unavailable)?;
    let mut rows: Vec<Value> = Vec::new();
    for m in &members {
        if let Some(r) = live.get(&m.id) {
            rows.push(json!({
                "pubkey": m.pubkey,
                "displayName": m.display_name,
                "status": r.status.as_str(),
                "summary": r.summary,
                "groups": r.groups,
                "via": "ws",
            }));
        }
    }
    for m in &members {
        if !live.contains_key(&m.id) && recent.contains(&m.id) {
            rows.push(json!({
                "pubkey": m.pubkey,
                "displayName": m.display_name,
                "status": "idle",
                "summary": null,
                "groups": [],
                "via": "rest",
            }));
        }
    }
    Ok(json!({ "peers": rows }))
}

fn notification_json(n: &NotificationView) -> Value {
    json!({
        "id": n.message.id,
        "notificationId": n.notification.id,
        "topicId": n.notification.topic_id,
        "topicName": n.topic_name,
        "senderName": n.message.sender_name,
        "senderPubkey": n.message.sender_member_pubkey,
        "ciphertext": n.message.ciphertext,
        "kind": n.notification.kind,
        "readAt": n.notification.read_at.map(iso8601_ms),
        "createdAt": iso8601_ms(n.message.created_at),
    })
}

async fn notifications(call: &Call) -> RestResult {
    let since = query_time(call, "since")
        .map_err(|()| RestError::route(StatusCode::BAD_REQUEST, "invalid_since"))?;
    let Some(p) = &call.principal else {
        return Ok(json!({"notifications": []}));
    };
    let unread = matches!(call.query("unread"), Some("1" | "true"));
    let since = since.unwrap_or_else(|| now_ms() - topics::NOTIFICATION_WINDOW_MS);
    let list = topics::notifications(&call.svc, p, Some(since), unread)
        .await
        .map_err(topic_error)?;
    Ok(json!({
        "notifications": list.iter().map(notification_json).collect::<Vec<_>>(),
        "since": iso8601_ms(since),
        "mentionedAs": p.member.display_name,
    }))
}

async fn notifications_read(call: &Call) -> RestResult {
    let body = object_body(call)?;
    let p = call.issuer()?;
    if let Some(ids) = body.get("ids").filter(|v| !v.is_null()) {
        let ids: Vec<String> = match ids.as_array() {
            Some(a) if (1..=200).contains(&a.len()) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| RestError::invalid("invalid_type", "ids: Expected string"))?,
            _ => {
                return Err(RestError::invalid(
                    "too_big",
                    "ids: Array must contain 1 to 200 element(s)",
                ));
            }
        };
        let (marked, at) = topics::mark_notifications_read(&call.svc, p, MarkWhich::Ids(ids))
            .await
            .map_err(topic_error)?;
        return Ok(json!({"marked": marked, "readAt": iso8601_ms(at)}));
    }
    if body.get("all") == Some(&Value::Bool(true)) {
        let before = match body.get("before") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(
                parse_iso_ms(s)
                    .ok_or_else(|| RestError::route(StatusCode::BAD_REQUEST, "invalid_before"))?,
            ),
            Some(_) => return Err(RestError::route(StatusCode::BAD_REQUEST, "invalid_before")),
        };
        topics::mark_notifications_read(&call.svc, p, MarkWhich::All { before })
            .await
            .map_err(topic_error)?;
        return Ok(json!({"marked": "all", "before": before.map(iso8601_ms)}));
    }
    Err(RestError::invalid(
        "invalid_union",
        "body: Expected {ids} or {all: true}",
    ))
}

async fn peer_pubkey(call: &Call) -> RestResult {
    let body = object_body(call)?;
    let pubkey = str_field(body, "pubkey", 64, 64)?;
    if !pubkey.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RestError::invalid(
            "invalid_string",
            "pubkey: 64 hex characters",
        ));
    }
    let pubkey = pubkey.to_ascii_lowercase();
    let p = call.issuer()?;
    use crate::store::web_members::KeyChange;
    let change = call
        .svc
        .store()
        .set_web_member_pubkey(&p.mesh.id, &p.member.id, &pubkey)
        .await;
    let (member, changed) = match change {
        Ok(KeyChange::Set { member, changed }) => (member, changed),
        Ok(KeyChange::NotFound) => {
            return Err(RestError::route(StatusCode::NOT_FOUND, "member_not_found"));
        }
        // A CLI member: its on-disk key must not change.
        Ok(KeyChange::NotWebManaged) => {
            return Err(RestError::route_with(
                StatusCode::CONFLICT,
                json!({"error": "not_web_member", "memberId": p.member.id,
                       "detail": "this member's key is held by its client; only web-managed members may change it"}),
            ));
        }
        Err(crate::store::StoreError::Conflict(_)) => {
            return Err(RestError::route_with(
                StatusCode::CONFLICT,
                json!({"error": "pubkey_taken",
                       "detail": "another member of this mesh has this key"}),
            ));
        }
        Err(e) => return Err(RestError::unavailable(e)),
    };
    if changed {
        // Ours (rest.md §4.10): every replica drops its cached row, the member's live
        // sockets close (their hello key is stale), and its sealed topic-key copies are
        // gone (deleted with the key change), so it is listed by `pending-seals` again.
        call.svc.members_changed(&p.mesh.id).await;
        close_member_sockets(&call.svc, &p.mesh.id, &member.id).await;
    }
    Ok(json!({"memberId": member.id, "pubkey": member.pubkey, "changed": changed}))
}

/// Closes every live socket of a member whose key was replaced (`session_replaced`: the
/// client reconnects with a hello signed by its new key).
async fn close_member_sockets(svc: &service::ServiceCtx, mesh_id: &str, member_id: &str) {
    let records = match svc.presence().list(mesh_id).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "peer-pubkey: presences not listed, sockets left open");
            return;
        }
    };
    let conn_ids: Vec<String> = records
        .iter()
        .filter(|r| r.member_id == member_id && r.is_live())
        .map(|r| r.conn_id.clone())
        .collect();
    if conn_ids.is_empty() {
        return;
    }
    let close = crate::protocol::codes::SESSION_REPLACED;
    let event = crate::cluster::bus::MeshEvent::Close {
        conn_ids,
        code: close.code,
        reason: close.reason.into(),
        after: crate::lifecycle::AfterClose::End,
    };
    if let Err(e) = svc.publish(mesh_id, event).await {
        tracing::warn!(error = %e, "peer-pubkey: close not published");
    }
}

/// The issuing user's live memberships: (mesh, member row).
async fn memberships(call: &Call) -> Result<Vec<(crate::store::Mesh, Member)>, RestError> {
    let p = call.issuer()?;
    let Some(user_id) = p.member.user_id.as_deref() else {
        return Err(RestError::route(
            StatusCode::BAD_REQUEST,
            "issuer_member_has_no_user",
        ));
    };
    let meshes = call
        .svc
        .store()
        .user_meshes(user_id)
        .await
        .map_err(RestError::unavailable)?;
    let mut out: Vec<(crate::store::Mesh, Member)> = Vec::new();
    for um in meshes {
        if let Some(m) = um.member.filter(|m| m.revoked_at.is_none()) {
            out.push((um.mesh, m));
        }
    }
    out.sort_by(|a, b| a.0.slug.cmp(&b.0.slug));
    Ok(out)
}

/// A principal acting as `member` of `mesh` (the `/me/*` routes span meshes).
fn as_member(call: &Call, mesh: &crate::store::Mesh, member: &Member) -> Principal {
    Principal {
        kind: service::PrincipalKind::ApiKey,
        mesh: mesh.clone(),
        member: member.clone(),
        presence_id: format!("rest:{}", call.key.key.id),
        routing_key: member.pubkey.clone(),
        display_name: member.display_name.clone(),
        session_key: None,
        peer_role: crate::cluster::presence::PeerRole::Session,
    }
}

fn snippet(m: &TopicMessage) -> (Value, Value) {
    if m.body_version == 1 {
        let text = STANDARD
            .decode(&m.ciphertext)
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .chars()
                    .take(240)
                    .collect::<String>()
            })
            .ok();
        (json!(text), Value::Null)
    } else {
        (Value::Null, json!(m.ciphertext))
    }
}

async fn me_workspace(call: &Call) -> RestResult {
    let user_id = call.issuer()?.member.user_id.clone().unwrap_or_default();
    let mut rows = Vec::new();
    let (mut peers, mut online, mut topics_n, mut unread) = (0u64, 0u64, 0u64, 0u64);
    for (mesh, member) in memberships(call).await? {
        let p = as_member(call, &mesh, &member);
        let members = mesh_members(call, &mesh.id).await?;
        let live = live_by_member(call, &mesh.id).await?;
        let t = topics::list(&call.svc, &p).await.map_err(topic_error)?;
        let n = topics::notifications(&call.svc, &p, Some(0), true)
            .await
            .map_err(topic_error)?;
        let (mp, mo, mt, mu) = (
            members.len() as u64,
            members.iter().filter(|m| live.contains_key(&m.id)).count() as u64,
            t.len() as u64,
            n.len() as u64,
        );
        peers += mp;
        online += mo;
        topics_n += mt;
        unread += mu;
        rows.push(json!({
            "meshId": mesh.id, "slug": mesh.slug, "name": mesh.name, "memberId": member.id,
            "myRole": member.role.as_str(), "joinedAt": iso8601_ms(member.created_at),
            "peers": mp, "online": mo, "topics": mt, "unreadMentions": mu,
        }));
    }
    Ok(json!({
        "userId": user_id,
        "totals": {"meshes": rows.len(), "peers": peers, "online": online, "topics": topics_n, "unreadMentions": unread},
        "meshes": rows,
    }))
}

async fn me_topics(call: &Call) -> RestResult {
    let mut rows: Vec<(Option<i64>, String, Value)> = Vec::new();
    let mut unread_total = 0u64;
    for (mesh, member) in memberships(call).await? {
        let p = as_member(call, &mesh, &member);
        for t in topics::list(&call.svc, &p).await.map_err(topic_error)? {
            let last = call
                .svc
                .store()
                .topic_history(&t.topic.id, None, 1)
                .await
                .map_err(RestError::unavailable)?
                .first()
                .map(|m| m.created_at);
            unread_total += t.unread;
            rows.push((
                last,
                t.topic.name.clone(),
                json!({
                    "topicId": t.topic.id, "name": t.topic.name, "description": t.topic.description,
                    "visibility": t.topic.visibility, "createdAt": iso8601_ms(t.topic.created_at),
                    "meshId": mesh.id, "meshSlug": mesh.slug, "meshName": mesh.name,
                    "memberId": member.id, "unread": t.unread, "lastMessageAt": last.map(iso8601_ms),
                }),
            ));
        }
    }
    rows.sort_by(|a, b| match (a.0, b.0) {
        (Some(x), Some(y)) => y.cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.1.cmp(&b.1),
    });
    Ok(json!({
        "totals": {"topics": rows.len(), "unread": unread_total},
        "topics": rows.into_iter().map(|r| r.2).collect::<Vec<_>>(),
    }))
}

async fn me_notifications(call: &Call) -> RestResult {
    let since = query_time(call, "since")
        .map_err(|()| RestError::route(StatusCode::BAD_REQUEST, "invalid_since"))?
        .unwrap_or_else(|| now_ms() - 7 * 24 * 3_600_000);
    let all = call.query("include") == Some("all");
    let mut rows: Vec<(i64, Value)> = Vec::new();
    let mut unread = 0u64;
    for (mesh, member) in memberships(call).await? {
        let p = as_member(call, &mesh, &member);
        for n in topics::notifications(&call.svc, &p, Some(since), !all)
            .await
            .map_err(topic_error)?
        {
            if n.notification.read_at.is_none() {
                unread += 1;
            }
            let (snip, cipher) = snippet(&n.message);
            rows.push((
                n.message.created_at,
                json!({
                    "notificationId": n.notification.id, "messageId": n.message.id,
                    "topicId": n.notification.topic_id, "topicName": n.topic_name,
                    "meshId": mesh.id, "meshSlug": mesh.slug, "meshName": mesh.name,
                    "senderName": n.message.sender_name, "snippet": snip, "ciphertext": cipher,
                    "bodyVersion": n.message.body_version, "read": n.notification.read_at.is_some(),
                    "readAt": n.notification.read_at.map(iso8601_ms),
                    "createdAt": iso8601_ms(n.message.created_at),
                }),
            ));
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    rows.truncate(100);
    Ok(json!({
        "totals": {"unread": unread, "total": rows.len()},
        "notifications": rows.into_iter().map(|r| r.1).collect::<Vec<_>>(),
    }))
}

/// Others' topic messages of the user's meshes since `since`, newest first, at most
/// `limit`, with their mesh and topic.
async fn recent_messages(
    call: &Call,
    since: i64,
    limit: usize,
) -> Result<Vec<(crate::store::Mesh, Member, Topic, TopicMessage)>, RestError> {
    let mut out = Vec::new();
    for (mesh, member) in memberships(call).await? {
        let p = as_member(call, &mesh, &member);
        for t in topics::list(&call.svc, &p).await.map_err(topic_error)? {
            let Ok(msgs) = topics::history(&call.svc, &p, &t.topic, Some(200), None).await else {
                continue;
            };
            for m in msgs
                .into_iter()
                .filter(|m| m.created_at >= since && m.sender_member_id != member.id)
            {
                out.push((mesh.clone(), member.clone(), t.topic.clone(), m));
            }
        }
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.3.created_at));
    out.truncate(limit);
    Ok(out)
}

async fn me_activity(call: &Call) -> RestResult {
    let since = query_time(call, "since")
        .map_err(|()| RestError::route(StatusCode::BAD_REQUEST, "invalid_since"))?
        .unwrap_or_else(|| now_ms() - 24 * 3_600_000);
    let rows: Vec<Value> = recent_messages(call, since, 200)
        .await?
        .iter()
        .map(|(mesh, _, t, m)| {
            let (snip, cipher) = snippet(m);
            json!({
                "messageId": m.id, "topicId": t.id, "topicName": t.name,
                "meshId": mesh.id, "meshSlug": mesh.slug, "meshName": mesh.name,
                "senderName": if m.sender_name.is_empty() { "?" } else { &m.sender_name },
                "senderMemberId": m.sender_member_id, "snippet": snip, "ciphertext": cipher,
                "bodyVersion": m.body_version, "createdAt": iso8601_ms(m.created_at),
            })
        })
        .collect();
    Ok(json!({"totals": {"events": rows.len()}, "activity": rows}))
}

async fn me_search(call: &Call) -> RestResult {
    let limit = query_limit(call, "limit", 50)? as usize;
    let q = call.query("q").unwrap_or_default().trim().to_lowercase();
    if q.chars().count() < 2 {
        return Ok(json!({"query": q, "topics": [], "messages": [],
                         "totals": {"topics": 0, "messages": 0}}));
    }
    let mut topic_rows = Vec::new();
    for (mesh, member) in memberships(call).await? {
        let p = as_member(call, &mesh, &member);
        for t in topics::list(&call.svc, &p).await.map_err(topic_error)? {
            if t.topic.name.to_lowercase().contains(&q) && topic_rows.len() < limit {
                topic_rows.push(json!({
                    "id": t.topic.id, "name": t.topic.name, "description": t.topic.description,
                    "meshId": mesh.id, "meshSlug": mesh.slug, "meshName": mesh.name,
                }));
            }
        }
    }
    let since = now_ms() - 30 * 24 * 3_600_000;
    let mut message_rows = Vec::new();
    for (mesh, _, t, m) in recent_messages(call, since, 2000).await? {
        let (snip, _) = snippet(&m);
        let hit = snip.as_str().is_some_and(|s| s.to_lowercase().contains(&q))
            || m.sender_name.to_lowercase().contains(&q)
            || t.name.to_lowercase().contains(&q);
        if hit && message_rows.len() < limit {
            message_rows.push(json!({
                "messageId": m.id, "topicId": t.id, "topicName": t.name, "meshId": mesh.id,
                "meshSlug": mesh.slug, "senderName": m.sender_name, "snippet": snip,
                "bodyVersion": m.body_version, "createdAt": iso8601_ms(m.created_at),
            }));
        }
    }
    Ok(json!({
        "query": q,
        "totals": {"topics": topic_rows.len(), "messages": message_rows.len()},
        "topics": topic_rows,
        "messages": message_rows,
    }))
}

async fn me_tasks(call: &Call) -> RestResult {
    use crate::store::tasks::{TaskFilter, TaskStatus};
    let status = call.query("status").unwrap_or("active").to_string();
    let wanted: Option<Vec<String>> = match status.as_str() {
        "all" => None,
        "active" => Some(vec!["open".into(), "claimed".into()]),
        list => Some(
            list.split(',')
                .map(|s| match s.trim() {
                    "completed" => "done".to_string(),
                    other => other.to_string(),
                })
                .collect(),
        ),
    };
    let cutoff = now_ms() - 30 * 24 * 3_600_000;
    let (mut open, mut claimed, mut completed) = (0u64, 0u64, 0u64);
    let mut rows: Vec<(u8, i64, Value)> = Vec::new();
    for (mesh, _) in memberships(call).await? {
        let tasks = call
            .svc
            .store()
            .list_tasks(&mesh.id, &TaskFilter::default(), 200)
            .await
            .map_err(RestError::unavailable)?;
        for t in tasks {
            let st = t.status.as_str();
            match t.status {
                TaskStatus::Open => open += 1,
                TaskStatus::Claimed => claimed += 1,
                TaskStatus::Done => completed += 1,
            }
            if wanted.as_ref().is_some_and(|w| !w.iter().any(|s| s == st)) {
                continue;
            }
            if status != "all" && t.completed_at.is_some_and(|c| c < cutoff) {
                continue;
            }
            let rank = match t.status {
                TaskStatus::Open => 0,
                TaskStatus::Claimed => 1,
                TaskStatus::Done => 2,
            };
            rows.push((
                rank,
                t.created_at,
                json!({
                    "id": t.id, "meshId": mesh.id, "meshSlug": mesh.slug, "title": t.title,
                    "assignee": t.assignee, "claimedByName": t.claimed_by.as_ref().map(|a| a.name.clone()),
                    "priority": t.priority, "status": st, "tags": t.tags, "result": t.result,
                    "createdByName": t.created_by.as_ref().map(|a| a.name.clone()),
                    "createdAt": iso8601_ms(t.created_at), "claimedAt": t.claimed_at.map(iso8601_ms),
                    "completedAt": t.completed_at.map(iso8601_ms),
                }),
            ));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    rows.truncate(200);
    Ok(json!({
        "totals": {"open": open, "claimed": claimed, "completed": completed},
        "tasks": rows.into_iter().map(|r| r.2).collect::<Vec<_>>(),
    }))
}

async fn me_state(call: &Call) -> RestResult {
    let key = call.query("key").map(str::to_string);
    let mut rows: Vec<(i64, Value)> = Vec::new();
    let mut meshes = 0usize;
    for (mesh, _) in memberships(call).await? {
        let entries = match &key {
            Some(k) => call
                .svc
                .store()
                .state(&mesh.id, k)
                .await
                .map_err(RestError::unavailable)?
                .into_iter()
                .collect::<Vec<_>>(),
            None => call
                .svc
                .store()
                .list_state(&mesh.id, 500)
                .await
                .map_err(RestError::unavailable)?,
        };
        if !entries.is_empty() {
            meshes += 1;
        }
        for e in entries {
            rows.push((
                e.updated_at,
                json!({"meshId": mesh.id, "meshSlug": mesh.slug, "key": e.key, "value": e.value,
                       "updatedByName": e.updated_by_name, "updatedAt": iso8601_ms(e.updated_at)}),
            ));
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    rows.truncate(500);
    Ok(json!({
        "totals": {"entries": rows.len(), "meshes": meshes},
        "entries": rows.into_iter().map(|r| r.1).collect::<Vec<_>>(),
    }))
}

async fn me_memory(call: &Call) -> RestResult {
    let q = call
        .query("q")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let cutoff = now_ms() - 30 * 24 * 3_600_000;
    let mut rows: Vec<(i64, Value)> = Vec::new();
    for (mesh, _) in memberships(call).await? {
        let found = call
            .svc
            .store()
            .recall(&mesh.id, q.as_deref().unwrap_or(""), 200)
            .await
            .map_err(RestError::unavailable)?;
        for m in found {
            let keep = match &q {
                Some(q) => {
                    let q = q.to_lowercase();
                    m.content.to_lowercase().contains(&q)
                        || m.tags.iter().any(|t| t.to_lowercase().contains(&q))
                }
                None => m.created_at >= cutoff,
            };
            if keep {
                rows.push((
                    m.created_at,
                    json!({"id": m.id, "meshId": mesh.id, "meshSlug": mesh.slug, "content": m.content,
                           "tags": m.tags, "rememberedByName": m.member_name,
                           "rememberedAt": iso8601_ms(m.created_at)}),
                ));
            }
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    rows.truncate(200);
    Ok(json!({
        "query": q,
        "totals": {"entries": rows.len()},
        "memories": rows.into_iter().map(|r| r.1).collect::<Vec<_>>(),
    }))
}

fn inbox_json(m: &QueuedMessage) -> Value {
    json!({
        "messageId": m.id,
        "senderPubkey": m.sender_pubkey,
        "senderMemberPubkey": m.sender_member_pubkey,
        "senderName": m.sender_name,
        "priority": m.priority.as_str(),
        "nonce": m.nonce,
        "ciphertext": m.ciphertext,
        "createdAt": iso8601_ms(m.created_at),
        "subtype": m.subtype,
    })
}

/// **Beyond:** the issuer's queued direct messages (`service::queue::drain`, leased for
/// `CLAIM_LEASE_MS`): each is returned again after its lease until `POST /inbox/ack`
/// confirms it, as a WebSocket `push` is until its `client_ack`.
async fn inbox(call: &Call) -> RestResult {
    let limit = query_limit(call, "limit", 50)? as usize;
    let p = call.issuer()?;
    let req = service::DrainRequest {
        steal: false,
        all_priorities: true,
        limit,
    };
    let d = service::queue::drain(&call.svc, p, req)
        .await
        .map_err(|e| RestError::unavailable(e.message()))?;
    Ok(json!({
        "messages": d.messages.iter().map(inbox_json).collect::<Vec<_>>(),
        "leaseUntil": iso8601_ms(d.lease_until),
        "more": d.more,
    }))
}

async fn inbox_ack(call: &Call) -> RestResult {
    let body = object_body(call)?;
    let ids: Vec<String> = match body.get("ids").and_then(Value::as_array) {
        Some(a) if (1..=512).contains(&a.len()) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .filter(|s| !s.is_empty() && s.len() <= 64)
                    .map(str::to_string)
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| RestError::invalid("invalid_type", "ids: Expected strings"))?,
        _ => {
            return Err(RestError::invalid(
                "invalid_type",
                "ids: Array of 1 to 512 message ids required",
            ));
        }
    };
    let p = call.issuer()?;
    let mut outcome = service::AckOutcome::default();
    for id in &ids {
        match service::queue::client_ack(&call.svc, p, service::AckRequest::BrokerId(id)).await {
            Ok(o) => {
                outcome.confirmed.extend(o.confirmed);
                outcome.unmatched.extend(o.unmatched);
            }
            Err(e) => return Err(RestError::unavailable(e.message())),
        }
    }
    Ok(json!({"confirmed": outcome.confirmed, "unmatched": outcome.unmatched}))
}
