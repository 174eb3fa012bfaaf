//! The one route table of REST v1 (`rest.md` §3): dispatch ([`find`]) and the OpenAPI
//! document (`openapi.rs`) are both read from [`ROUTES`].

use hyper::Method;
use serde_json::{Value, json};

/// What a route does (the handler `handlers::run` calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    PostMessage,
    ListTopics,
    TopicMessages,
    TopicStream,
    MarkRead,
    TopicKey,
    ClaimKey,
    PendingSeals,
    Seal,
    Members,
    Peers,
    Notifications,
    NotificationsRead,
    PeerPubkey,
    MeWorkspace,
    MeTopics,
    MeNotifications,
    MeActivity,
    MeSearch,
    MeTasks,
    MeState,
    MeMemory,
    Inbox,
    InboxAck,
    OpenApi,
}

/// How a route applies the key's topic scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    None,
    /// The `{name}` path parameter must be in scope.
    Path,
    /// The body's `topic` must be in scope (checked by the handler).
    Body,
    /// The answer is filtered by the scope.
    Filters,
    /// Only unscoped keys (`/me/*`, **Ours**).
    Unscoped,
}

/// Whether a route needs the key's issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issuer {
    Optional,
    /// 400 `api_key_has_no_issuer` without one.
    Required,
    /// Also 400 `issuer_member_has_no_user` when the issuer has no `user_id`.
    User,
}

/// A query parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub doc: &'static str,
    pub schema: fn() -> Value,
}

/// One route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub op: Op,
    pub method: &'static str,
    /// Under `/api/v1`, `{name}` for a path parameter.
    pub path: &'static str,
    pub summary: &'static str,
    /// Whether the key layer applies (every route but the document itself).
    pub auth: bool,
    /// The capability required (`admin` also admits).
    pub cap: Option<&'static str>,
    pub scope: Scope,
    pub issuer: Issuer,
    pub query: &'static [Param],
    /// The JSON body schema, for routes that read one.
    pub body: Option<fn() -> Value>,
    /// The 200 body schema (`text/event-stream` for the stream).
    pub ok: fn() -> Value,
    /// Route-level error statuses (`{error}` bodies) besides the key layer's.
    pub errors: &'static [u16],
    pub stream: bool,
}

fn s() -> Value {
    json!({"type": "string"})
}
fn s_or_null() -> Value {
    json!({"type": ["string", "null"]})
}
fn int() -> Value {
    json!({"type": "integer"})
}
fn boolean() -> Value {
    json!({"type": "boolean"})
}
fn arr(items: Value) -> Value {
    json!({"type": "array", "items": items})
}
/// An object whose listed properties are all required (extra ones allowed).
fn obj(props: &[(&str, Value)]) -> Value {
    let mut p = serde_json::Map::new();
    for (k, v) in props {
        p.insert((*k).to_string(), v.clone());
    }
    let required: Vec<&str> = props.iter().map(|(k, _)| *k).collect();
    json!({"type": "object", "properties": p, "required": required})
}

fn limit_1_200() -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": 200, "default": 50})
}
fn iso_time() -> Value {
    json!({"type": "string", "format": "date-time"})
}
fn any_string() -> Value {
    s()
}
fn unread_flag() -> Value {
    json!({"type": "string", "enum": ["1", "0", "true", "false"]})
}
fn include_all() -> Value {
    json!({"type": "string", "enum": ["all"]})
}
fn q_string() -> Value {
    json!({"type": "string", "maxLength": 200})
}

fn topic_message() -> Value {
    obj(&[
        ("id", s()),
        ("senderMemberId", s()),
        ("senderPubkey", s()),
        ("senderName", s()),
        ("nonce", s()),
        ("ciphertext", s()),
        ("bodyVersion", int()),
        ("replyToId", s_or_null()),
        ("createdAt", s()),
    ])
}

pub fn post_message_body() -> Value {
    let mut b = obj(&[
        (
            "topic",
            json!({"type": "string", "minLength": 1, "maxLength": 64}),
        ),
        ("ciphertext", json!({"type": "string", "minLength": 1})),
        ("nonce", json!({"type": "string", "minLength": 1})),
    ]);
    let p = &mut b["properties"];
    p["priority"] = json!({"type": "string", "enum": ["now", "next", "low"]});
    p["bodyVersion"] = json!({"type": "integer", "enum": [1, 2]});
    p["mentions"] = json!({"type": "array", "maxItems": 16, "items": {"type": "string", "minLength": 1, "maxLength": 64}});
    p["replyToId"] = json!({"type": "string", "minLength": 1, "maxLength": 128});
    b
}
fn post_message_ok() -> Value {
    let mut o = obj(&[
        ("messageId", s()),
        ("historyId", s()),
        ("queueId", s()),
        ("topic", s()),
        ("topicId", s()),
        ("notifications", int()),
        ("bodyVersion", int()),
    ]);
    o["properties"]["replyToId"] = s();
    o
}
fn topics_ok() -> Value {
    obj(&[(
        "topics",
        arr(obj(&[
            ("id", s()),
            ("name", s()),
            ("description", s_or_null()),
            ("visibility", s()),
            ("createdAt", s()),
            ("unread", int()),
        ])),
    )])
}
fn topic_messages_ok() -> Value {
    obj(&[
        ("topic", s()),
        ("topicId", s()),
        ("messages", arr(topic_message())),
    ])
}
fn stream_ok() -> Value {
    json!({"type": "string", "description": "text/event-stream: `ready`, `message` (id: message id; data: a topic message), `heartbeat` (epoch ms) and `error` events"})
}
fn mark_read_ok() -> Value {
    obj(&[("topic", s()), ("topicId", s()), ("readAt", s())])
}
fn topic_key_ok() -> Value {
    obj(&[
        ("topic", s()),
        ("topicId", s()),
        ("encryptedKey", s()),
        ("nonce", s()),
        ("senderPubkey", s()),
        ("createdAt", s()),
    ])
}
pub fn claim_key_body() -> Value {
    obj(&[
        (
            "encryptedKeyPubkey",
            json!({"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}),
        ),
        (
            "encryptedKey",
            json!({"type": "string", "minLength": 1, "maxLength": 4096}),
        ),
        (
            "nonce",
            json!({"type": "string", "minLength": 1, "maxLength": 64}),
        ),
    ])
}
fn claim_key_ok() -> Value {
    obj(&[
        ("topic", s()),
        ("topicId", s()),
        ("senderPubkey", s()),
        ("memberId", s()),
        ("claimed", boolean()),
    ])
}
fn pending_seals_ok() -> Value {
    obj(&[
        ("topic", s()),
        ("topicId", s()),
        ("senderPubkey", s_or_null()),
        (
            "pending",
            arr(obj(&[
                ("memberId", s()),
                ("pubkey", s()),
                ("displayName", s()),
            ])),
        ),
    ])
}
pub fn seal_body() -> Value {
    obj(&[
        (
            "memberId",
            json!({"type": "string", "minLength": 1, "maxLength": 128}),
        ),
        (
            "encryptedKey",
            json!({"type": "string", "minLength": 1, "maxLength": 4096}),
        ),
        (
            "nonce",
            json!({"type": "string", "minLength": 1, "maxLength": 64}),
        ),
    ])
}
fn seal_ok() -> Value {
    obj(&[
        ("topic", s()),
        ("topicId", s()),
        ("memberId", s()),
        ("sealedAt", s()),
    ])
}
fn members_ok() -> Value {
    obj(&[(
        "members",
        arr(obj(&[
            ("memberId", s()),
            ("pubkey", s()),
            ("displayName", s()),
            ("role", s()),
            ("isHuman", boolean()),
            ("joinedAt", s()),
            ("online", boolean()),
            ("status", s()),
            ("summary", s_or_null()),
        ])),
    )])
}
fn peers_ok() -> Value {
    obj(&[(
        "peers",
        arr(obj(&[
            ("pubkey", s()),
            ("displayName", s()),
            ("status", s()),
            ("summary", s_or_null()),
            ("groups", arr(json!({"type": "object"}))),
            ("via", json!({"type": "string", "enum": ["ws", "rest"]})),
        ])),
    )])
}
fn notification_row() -> Value {
    obj(&[
        ("id", s()),
        ("notificationId", s()),
        ("topicId", s()),
        ("topicName", s()),
        ("senderName", s()),
        ("senderPubkey", s()),
        ("ciphertext", s()),
        ("kind", s()),
        ("readAt", s_or_null()),
        ("createdAt", s()),
    ])
}
fn notifications_ok() -> Value {
    let mut o = obj(&[("notifications", arr(notification_row()))]);
    o["properties"]["since"] = s();
    o["properties"]["mentionedAs"] = s();
    o
}
pub fn notifications_read_body() -> Value {
    json!({
        "type": "object",
        "properties": {
            "ids": {"type": "array", "minItems": 1, "maxItems": 200, "items": {"type": "string", "minLength": 1, "maxLength": 128}},
            "all": {"type": "boolean", "enum": [true]},
            "before": {"type": "string", "format": "date-time"}
        }
    })
}
fn notifications_read_ok() -> Value {
    json!({
        "type": "object",
        "properties": {
            "marked": {"type": ["integer", "string"]},
            "readAt": {"type": "string"},
            "before": {"type": ["string", "null"]}
        },
        "required": ["marked"]
    })
}
pub fn peer_pubkey_body() -> Value {
    obj(&[(
        "pubkey",
        json!({"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}),
    )])
}
fn peer_pubkey_ok() -> Value {
    obj(&[("memberId", s()), ("pubkey", s()), ("changed", boolean())])
}
fn totals() -> Value {
    json!({"type": "object"})
}
fn me_workspace_ok() -> Value {
    obj(&[
        ("userId", s()),
        (
            "meshes",
            arr(obj(&[
                ("meshId", s()),
                ("slug", s()),
                ("name", s()),
                ("memberId", s()),
                ("myRole", s()),
                ("joinedAt", s()),
                ("peers", int()),
                ("online", int()),
                ("topics", int()),
                ("unreadMentions", int()),
            ])),
        ),
        ("totals", totals()),
    ])
}
fn me_list(field: &'static str) -> Value {
    obj(&[
        (field, arr(json!({"type": "object"}))),
        ("totals", totals()),
    ])
}
fn me_topics_ok() -> Value {
    me_list("topics")
}
fn me_notifications_ok() -> Value {
    me_list("notifications")
}
fn me_activity_ok() -> Value {
    me_list("activity")
}
fn me_search_ok() -> Value {
    obj(&[
        ("query", s()),
        ("topics", arr(json!({"type": "object"}))),
        ("messages", arr(json!({"type": "object"}))),
        ("totals", totals()),
    ])
}
fn me_tasks_ok() -> Value {
    me_list("tasks")
}
fn me_state_ok() -> Value {
    me_list("entries")
}
fn me_memory_ok() -> Value {
    obj(&[
        ("query", s_or_null()),
        ("memories", arr(json!({"type": "object"}))),
        ("totals", totals()),
    ])
}
fn inbox_ok() -> Value {
    obj(&[
        (
            "messages",
            arr(obj(&[
                ("messageId", s()),
                ("senderPubkey", s()),
                ("senderMemberPubkey", s()),
                ("senderName", s()),
                ("priority", s()),
                ("nonce", s()),
                ("ciphertext", s()),
                ("createdAt", s()),
            ])),
        ),
        ("leaseUntil", s()),
        ("more", boolean()),
    ])
}
pub fn inbox_ack_body() -> Value {
    obj(&[(
        "ids",
        json!({"type": "array", "minItems": 1, "maxItems": 512, "items": {"type": "string", "minLength": 1, "maxLength": 64}}),
    )])
}
fn inbox_ack_ok() -> Value {
    obj(&[("confirmed", arr(s())), ("unmatched", arr(s()))])
}
fn openapi_ok() -> Value {
    json!({"type": "object"})
}

const LIMIT: Param = Param {
    name: "limit",
    doc: "page size, 1–200 (default 50)",
    schema: limit_1_200,
};
const SINCE: Param = Param {
    name: "since",
    doc: "ISO time",
    schema: iso_time,
};

const fn get(op: Op, path: &'static str, summary: &'static str, ok: fn() -> Value) -> Route {
    Route {
        op,
        method: "GET",
        path,
        summary,
        auth: true,
        cap: Some("read"),
        scope: Scope::None,
        issuer: Issuer::Optional,
        query: &[],
        body: None,
        ok,
        errors: &[],
        stream: false,
    }
}

const fn me(op: Op, path: &'static str, summary: &'static str, ok: fn() -> Value) -> Route {
    Route {
        scope: Scope::Unscoped,
        issuer: Issuer::User,
        ..get(op, path, summary, ok)
    }
}

/// Every route of REST v1, in `rest.md` §3 order, then ours.
pub static ROUTES: &[Route] = &[
    Route {
        method: "POST",
        cap: Some("send"),
        scope: Scope::Body,
        issuer: Issuer::Required,
        body: Some(post_message_body),
        errors: &[400, 403, 404],
        ..get(
            Op::PostMessage,
            "/messages",
            "Post to a topic",
            post_message_ok,
        )
    },
    Route {
        scope: Scope::Filters,
        ..get(
            Op::ListTopics,
            "/topics",
            "The mesh's topics with unread counts",
            topics_ok,
        )
    },
    Route {
        scope: Scope::Path,
        query: &[
            LIMIT,
            Param {
                name: "before",
                doc: "a message id: only older messages",
                schema: any_string,
            },
        ],
        errors: &[404],
        ..get(
            Op::TopicMessages,
            "/topics/{name}/messages",
            "A page of a topic's history, newest first",
            topic_messages_ok,
        )
    },
    Route {
        scope: Scope::Path,
        errors: &[404, 429, 503],
        stream: true,
        ..get(
            Op::TopicStream,
            "/topics/{name}/stream",
            "Server-Sent Events of a topic's new messages (resumable with Last-Event-ID)",
            stream_ok,
        )
    },
    Route {
        method: "PATCH",
        scope: Scope::Path,
        issuer: Issuer::Required,
        errors: &[400, 404],
        ..get(
            Op::MarkRead,
            "/topics/{name}/read",
            "Mark a topic read (joins it)",
            mark_read_ok,
        )
    },
    Route {
        scope: Scope::Path,
        issuer: Issuer::Required,
        errors: &[400, 404, 409],
        ..get(
            Op::TopicKey,
            "/topics/{name}/key",
            "The issuer's sealed copy of the topic key",
            topic_key_ok,
        )
    },
    Route {
        method: "POST",
        cap: Some("send"),
        scope: Scope::Path,
        issuer: Issuer::Required,
        body: Some(claim_key_body),
        errors: &[400, 404, 409],
        ..get(
            Op::ClaimKey,
            "/topics/{name}/claim-key",
            "Make an unencrypted topic keyed",
            claim_key_ok,
        )
    },
    Route {
        scope: Scope::Path,
        errors: &[404],
        ..get(
            Op::PendingSeals,
            "/topics/{name}/pending-seals",
            "Topic members without a sealed key copy",
            pending_seals_ok,
        )
    },
    Route {
        method: "POST",
        cap: Some("send"),
        scope: Scope::Path,
        body: Some(seal_body),
        errors: &[404, 409],
        ..get(
            Op::Seal,
            "/topics/{name}/seal",
            "Store a member's sealed copy of the topic key",
            seal_ok,
        )
    },
    get(Op::Members, "/members", "The mesh's members", members_ok),
    get(
        Op::Peers,
        "/peers",
        "Live peers and recent REST humans",
        peers_ok,
    ),
    Route {
        query: &[
            SINCE,
            Param {
                name: "unread",
                doc: "1: unread only",
                schema: unread_flag,
            },
        ],
        errors: &[400],
        ..get(
            Op::Notifications,
            "/notifications",
            "The issuer's mention notifications",
            notifications_ok,
        )
    },
    Route {
        method: "POST",
        issuer: Issuer::Required,
        body: Some(notifications_read_body),
        errors: &[400],
        ..get(
            Op::NotificationsRead,
            "/notifications/read",
            "Mark notifications read",
            notifications_read_ok,
        )
    },
    Route {
        method: "POST",
        cap: None,
        issuer: Issuer::Required,
        body: Some(peer_pubkey_body),
        errors: &[400, 404, 409],
        ..get(
            Op::PeerPubkey,
            "/me/peer-pubkey",
            "Replace a web-managed member's key",
            peer_pubkey_ok,
        )
    },
    me(
        Op::MeWorkspace,
        "/me/workspace",
        "The issuing user's meshes",
        me_workspace_ok,
    ),
    me(
        Op::MeTopics,
        "/me/topics",
        "The issuing user's topics",
        me_topics_ok,
    ),
    Route {
        query: &[
            SINCE,
            Param {
                name: "include",
                doc: "all: read ones too",
                schema: include_all,
            },
        ],
        errors: &[400],
        ..me(
            Op::MeNotifications,
            "/me/notifications",
            "The issuing user's notifications",
            me_notifications_ok,
        )
    },
    Route {
        query: &[SINCE],
        errors: &[400],
        ..me(
            Op::MeActivity,
            "/me/activity",
            "Others' topic messages",
            me_activity_ok,
        )
    },
    Route {
        query: &[
            Param {
                name: "q",
                doc: "the search text (≥ 2 chars)",
                schema: q_string,
            },
            LIMIT,
        ],
        ..me(
            Op::MeSearch,
            "/me/search",
            "Search topics and messages",
            me_search_ok,
        )
    },
    Route {
        query: &[Param {
            name: "status",
            doc: "active (default), all, or a comma list",
            schema: q_string,
        }],
        ..me(
            Op::MeTasks,
            "/me/tasks",
            "The issuing user's tasks",
            me_tasks_ok,
        )
    },
    Route {
        query: &[Param {
            name: "key",
            doc: "an exact state key",
            schema: q_string,
        }],
        ..me(
            Op::MeState,
            "/me/state",
            "Shared state across meshes",
            me_state_ok,
        )
    },
    Route {
        query: &[Param {
            name: "q",
            doc: "substring of content or a tag",
            schema: q_string,
        }],
        ..me(
            Op::MeMemory,
            "/me/memory",
            "Memories across meshes",
            me_memory_ok,
        )
    },
    Route {
        issuer: Issuer::Required,
        query: &[Param {
            name: "limit",
            doc: "at most this many, 1–200 (default 50)",
            schema: limit_1_200,
        }],
        errors: &[400, 503],
        ..get(
            Op::Inbox,
            "/inbox",
            "Beyond: the issuer's queued direct messages, leased until acknowledged",
            inbox_ok,
        )
    },
    Route {
        method: "POST",
        issuer: Issuer::Required,
        body: Some(inbox_ack_body),
        errors: &[400, 503],
        ..get(
            Op::InboxAck,
            "/inbox/ack",
            "Beyond: confirm inbox messages (as client_ack)",
            inbox_ack_ok,
        )
    },
    Route {
        auth: false,
        cap: None,
        ..get(Op::OpenApi, "/openapi.json", "This document", openapi_ok)
    },
];

/// The route of `method` and `path` (a full `/api/v1/…` path), with its decoded path
/// parameters.
pub fn find(method: &Method, path: &str) -> Option<(&'static Route, Vec<String>)> {
    let rel = path.strip_prefix("/api/v1")?;
    let segs: Vec<&str> = rel.split('/').skip(1).collect();
    'routes: for r in ROUTES {
        if r.method != method.as_str() {
            continue;
        }
        let pattern: Vec<&str> = r.path.split('/').skip(1).collect();
        if pattern.len() != segs.len() {
            continue;
        }
        let mut params = Vec::new();
        for (p, s) in pattern.iter().zip(&segs) {
            if p.starts_with('{') {
                match super::percent_decode(s, false) {
                    Some(v) if !v.is_empty() => params.push(v),
                    _ => continue 'routes,
                }
            } else if p != s {
                continue 'routes;
            }
        }
        return Some((r, params));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_the_spec_is_in_the_table_once() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(seen.insert((r.method, r.path)), "{} {}", r.method, r.path);
        }
        assert_eq!(ROUTES.len(), 25);
        let (r, p) = find(&Method::GET, "/api/v1/topics/a%20b/messages").expect("route");
        assert_eq!(r.op, Op::TopicMessages);
        assert_eq!(p, ["a b"]);
        assert!(find(&Method::GET, "/api/v1/topics//messages").is_none());
        assert!(find(&Method::DELETE, "/api/v1/messages").is_none());
    }
}
