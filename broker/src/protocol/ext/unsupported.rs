//! Frames of the families this broker does not offer (extensions §0.3): each is answered at
//! once, so the CLI fails with its normal line instead of waiting for its timeout.
//!
//! Two lists, kept apart on purpose:
//! - [`EXTERNAL`]: the families of §19, which need a service this broker does not run
//!   (object storage, Qdrant, Neo4j, a separate SQL database, a service runner).
//! - [`NOT_BUILT`]: the families of §9–§17 that need no external service but are not
//!   built yet (topics, API keys, peer relay, the peer MCP registry, webhooks, URL
//!   watches; contexts, skills and the vault have modules of their own). A later issue
//!   moves each family out of this list into its own module.
//!
//! What a frame gets ([`answer`]): a list-style read with a natural empty answer gets its
//! typed empty reply ([`EmptyReply`]); a frame the spec answers with nothing
//! (fire-and-forget) gets nothing unless it carried a `_reqId`; everything else gets
//! `error{code:"unsupported", message:"<type>: <feature> is not available on this broker (needs <service>)", _reqId}`.
//! An `error` without need is not harmless: the cold-path client resolves the oldest
//! pending request of another category with it (§0.2), so fire-and-forget frames stay
//! silent.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One family that is refused: its `type`s, what it is, and what it would need.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub section: &'static str,
    pub feature: &'static str,
    pub service: &'static str,
    pub types: &'static [&'static str],
}

/// §19: families that need an external service.
pub const EXTERNAL: &[Family] = &[
    Family {
        section: "19.1",
        feature: "file sharing",
        service: "MinIO or S3 object storage",
        types: &[
            "get_file",
            "list_files",
            "file_status",
            "delete_file",
            "grant_file_access",
        ],
    },
    Family {
        section: "19.2",
        feature: "vector search",
        service: "Qdrant",
        types: &[
            "vector_store",
            "vector_search",
            "vector_delete",
            "list_collections",
        ],
    },
    Family {
        section: "19.3",
        feature: "the graph database",
        service: "Neo4j",
        types: &["graph_query", "graph_execute"],
    },
    Family {
        section: "19.4",
        feature: "per-mesh SQL",
        service: "a separate SQL database",
        types: &["mesh_query", "mesh_execute", "mesh_schema"],
    },
    Family {
        section: "19.5",
        feature: "managed MCP services",
        service: "a service runner",
        types: &[
            "mcp_deploy",
            "mcp_undeploy",
            "mcp_update",
            "mcp_logs",
            "mcp_scope",
            "mcp_schema",
            "mcp_catalog",
            "skill_deploy",
        ],
    },
];

/// §9–§17: families that are not built yet (no external service needed). Each moves to its
/// own module when it is built; until then it is answered like [`EXTERNAL`].
pub const NOT_BUILT: &[Family] = &[
    Family {
        section: "9",
        feature: "topics",
        service: "a broker release with extensions §9",
        types: &[
            "topic_create",
            "topic_list",
            "topic_join",
            "topic_leave",
            "topic_members",
            "topic_history",
            "topic_mark_read",
        ],
    },
    Family {
        section: "10",
        feature: "API keys",
        service: "a broker release with extensions §10",
        types: &["apikey_create", "apikey_list", "apikey_revoke"],
    },
    Family {
        section: "13",
        feature: "peer file relay",
        service: "a broker release with extensions §13",
        types: &[
            "peer_file_request",
            "peer_file_response",
            "peer_dir_request",
            "peer_dir_response",
        ],
    },
    Family {
        section: "14",
        feature: "the peer MCP registry",
        service: "a broker release with extensions §14",
        types: &[
            "mcp_register",
            "mcp_unregister",
            "mcp_list",
            "mcp_call",
            "mcp_call_response",
        ],
    },
    Family {
        section: "15",
        feature: "webhooks",
        service: "a broker release with extensions §15",
        types: &["create_webhook", "list_webhooks", "delete_webhook"],
    },
    Family {
        section: "17",
        feature: "URL watches",
        service: "a broker release with extensions §17",
        types: &["watch", "unwatch", "watch_list"],
    },
];

/// The client frame `type`s of this family: every type of [`EXTERNAL`] and [`NOT_BUILT`].
pub const TYPES: &[&str] = &[
    // §19 (EXTERNAL)
    "get_file",
    "list_files",
    "file_status",
    "delete_file",
    "grant_file_access",
    "vector_store",
    "vector_search",
    "vector_delete",
    "list_collections",
    "graph_query",
    "graph_execute",
    "mesh_query",
    "mesh_execute",
    "mesh_schema",
    "mcp_deploy",
    "mcp_undeploy",
    "mcp_update",
    "mcp_logs",
    "mcp_scope",
    "mcp_schema",
    "mcp_catalog",
    "skill_deploy",
    // §9–§17 (NOT_BUILT)
    "topic_create",
    "topic_list",
    "topic_join",
    "topic_leave",
    "topic_members",
    "topic_history",
    "topic_mark_read",
    "apikey_create",
    "apikey_list",
    "apikey_revoke",
    "peer_file_request",
    "peer_file_response",
    "peer_dir_request",
    "peer_dir_response",
    "mcp_register",
    "mcp_unregister",
    "mcp_list",
    "mcp_call",
    "mcp_call_response",
    "create_webhook",
    "list_webhooks",
    "delete_webhook",
    "watch",
    "unwatch",
    "watch_list",
];

/// Types the spec answers with nothing (fire-and-forget): silent unless a `_reqId` asks.
pub const FIRE_AND_FORGET: &[&str] = &[
    "topic_join",
    "topic_leave",
    "topic_mark_read",
    "peer_file_response",
    "peer_dir_response",
    "mcp_unregister",
    "mcp_call_response",
];

/// The typed empty replies of list-style reads (§0.3), one variant per reply `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EmptyReply {
    FileList {
        files: Vec<Value>,
    },
    CollectionList {
        collections: Vec<String>,
    },
    MeshSchemaResult {
        tables: Vec<Value>,
    },
    /// snake_case fields on the wire, as §19.5 has them.
    McpSchemaResult {
        server_name: String,
        tools: Vec<Value>,
    },
    McpCatalogResult {
        services: Vec<Value>,
    },
    TopicListResponse {
        topics: Vec<Value>,
    },
    /// `topic` as sent.
    TopicMembersResponse {
        topic: String,
        members: Vec<Value>,
    },
    /// `topic` as sent.
    TopicHistoryResponse {
        topic: String,
        messages: Vec<Value>,
    },
    ApikeyListResponse {
        keys: Vec<Value>,
    },
    McpListResult {
        servers: Vec<Value>,
    },
    /// An empty registry knows no server: the reference's own text for that.
    McpCallResult {
        error: String,
    },
    WebhookList {
        webhooks: Vec<Value>,
    },
    WatchListResult {
        watches: Vec<Value>,
    },
}

/// An [`EmptyReply`] with the request's `_reqId`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(flatten)]
    pub body: EmptyReply,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// What the broker answers to one refused frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The typed empty reply.
    Empty(EmptyReply),
    /// `error{code:"unsupported", message}`.
    Unsupported(String),
    /// Nothing (a fire-and-forget frame without `_reqId`).
    Silent,
}

/// The family that owns `kind`, if one of the lists here does.
pub fn family(kind: &str) -> Option<&'static Family> {
    EXTERNAL
        .iter()
        .chain(NOT_BUILT)
        .find(|f| f.types.contains(&kind))
}

/// The exact `message` of the `unsupported` error for `kind`.
pub fn unsupported_message(kind: &str) -> String {
    match family(kind) {
        Some(f) => format!(
            "{kind}: {} is not available on this broker (needs {})",
            f.feature, f.service
        ),
        None => format!("{kind}: this feature is not available on this broker"),
    }
}

/// What `kind` gets; `frame` is the decoded client frame (fields the empty replies echo).
pub fn answer(kind: &str, frame: &Value, has_req_id: bool) -> Answer {
    let text = |field: &str| {
        frame
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let empty = match kind {
        "list_files" => Some(EmptyReply::FileList { files: vec![] }),
        "list_collections" => Some(EmptyReply::CollectionList {
            collections: vec![],
        }),
        "mesh_schema" => Some(EmptyReply::MeshSchemaResult { tables: vec![] }),
        "mcp_schema" => Some(EmptyReply::McpSchemaResult {
            server_name: text("server_name"),
            tools: vec![],
        }),
        "mcp_catalog" => Some(EmptyReply::McpCatalogResult { services: vec![] }),
        "topic_list" => Some(EmptyReply::TopicListResponse { topics: vec![] }),
        "topic_members" => Some(EmptyReply::TopicMembersResponse {
            topic: text("topic"),
            members: vec![],
        }),
        "topic_history" => Some(EmptyReply::TopicHistoryResponse {
            topic: text("topic"),
            messages: vec![],
        }),
        "apikey_list" => Some(EmptyReply::ApikeyListResponse { keys: vec![] }),
        "mcp_list" => Some(EmptyReply::McpListResult { servers: vec![] }),
        "mcp_call" => Some(EmptyReply::McpCallResult {
            error: format!("MCP server {:?} not found in mesh", text("serverName")),
        }),
        "list_webhooks" => Some(EmptyReply::WebhookList { webhooks: vec![] }),
        "watch_list" => Some(EmptyReply::WatchListResult { watches: vec![] }),
        _ => None,
    };
    match empty {
        Some(reply) => Answer::Empty(reply),
        None if FIRE_AND_FORGET.contains(&kind) && !has_req_id => Answer::Silent,
        None => Answer::Unsupported(unsupported_message(kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_is_exactly_the_union_of_both_lists() {
        let listed: Vec<&str> = EXTERNAL
            .iter()
            .chain(NOT_BUILT)
            .flat_map(|f| f.types.iter().copied())
            .collect();
        assert_eq!(listed, TYPES);
        for kind in FIRE_AND_FORGET {
            assert!(TYPES.contains(kind), "{kind}");
        }
    }

    #[test]
    fn no_type_refused_here_belongs_to_a_family_that_is_built() {
        use crate::protocol::ext as e;
        let built = [
            e::state::TYPES,
            e::memories::TYPES,
            e::tasks::TYPES,
            e::streams::TYPES,
            e::schedule::TYPES,
            e::clocks::TYPES,
            e::msg_status::TYPES,
            e::audit_query::TYPES,
            e::info::TYPES,
            e::contexts::TYPES,
            e::skills::TYPES,
            e::vault::TYPES,
        ];
        for kind in TYPES {
            assert!(
                !built.iter().any(|types| types.contains(kind)),
                "{kind} is built: remove it from NOT_BUILT"
            );
        }
    }

    #[test]
    fn the_unsupported_message_has_the_spec_form() {
        assert_eq!(
            unsupported_message("get_file"),
            "get_file: file sharing is not available on this broker (needs MinIO or S3 object storage)"
        );
        assert_eq!(
            answer("vector_store", &serde_json::json!({}), true),
            Answer::Unsupported(
                "vector_store: vector search is not available on this broker (needs Qdrant)".into()
            )
        );
    }

    #[test]
    fn list_reads_get_typed_empty_replies_and_fire_and_forget_stays_silent() {
        let frame = serde_json::json!({"type": "topic_members", "topic": "general"});
        let Answer::Empty(body) = answer("topic_members", &frame, false) else {
            panic!("typed reply expected");
        };
        let wire = serde_json::to_value(Reply {
            body,
            req_id: Some("r1".into()),
        })
        .unwrap();
        assert_eq!(
            wire,
            serde_json::json!({"type": "topic_members_response", "topic": "general", "members": [], "_reqId": "r1"})
        );
        let list = serde_json::to_value(Reply {
            body: EmptyReply::McpListResult { servers: vec![] },
            req_id: None,
        })
        .unwrap();
        assert_eq!(
            list,
            serde_json::json!({"type": "mcp_list_result", "servers": []})
        );
        assert_eq!(
            answer("topic_join", &serde_json::json!({}), false),
            Answer::Silent
        );
        assert!(matches!(
            answer("topic_join", &serde_json::json!({}), true),
            Answer::Unsupported(_)
        ));
    }
}
