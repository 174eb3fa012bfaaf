//! Frames of the families this broker does not offer (extensions §0.3): each is answered at
//! once, so the CLI fails with its normal line instead of waiting for its timeout.
//!
//! Two lists, kept apart on purpose:
//! - [`EXTERNAL`]: the families of §19, which need a service this broker does not run
//!   (Qdrant, Neo4j, a separate SQL database, a service runner; files, §19.1, are
//!   stored in the broker's own store and have their own module).
//! - [`NOT_BUILT`]: the families of §9–§17 that need no external service but are not
//!   built yet (topics, API keys, peer relay, the peer MCP registry; contexts, skills,
//!   the vault, webhooks and URL watches have modules of their own). A later issue
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

/// §9–§17: families that are not built yet (no external service needed). Every one of them
/// is built today, so this is empty; a family added to the spec later is listed here until
/// its module exists, and is answered like [`EXTERNAL`].
pub const NOT_BUILT: &[Family] = &[];

/// The client frame `type`s of this family: every type of [`EXTERNAL`] and [`NOT_BUILT`].
pub const TYPES: &[&str] = &[
    // §19 (EXTERNAL; files, §19.1, have their own module)
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
];

/// Types the spec answers with nothing (fire-and-forget): silent unless a `_reqId` asks.
pub const FIRE_AND_FORGET: &[&str] = &[];

/// The typed empty replies of list-style reads (§0.3), one variant per reply `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EmptyReply {
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
        "list_collections" => Some(EmptyReply::CollectionList {
            collections: vec![],
        }),
        "mesh_schema" => Some(EmptyReply::MeshSchemaResult { tables: vec![] }),
        "mcp_schema" => Some(EmptyReply::McpSchemaResult {
            server_name: text("server_name"),
            tools: vec![],
        }),
        "mcp_catalog" => Some(EmptyReply::McpCatalogResult { services: vec![] }),
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
            e::topics::TYPES,
            e::peer_relay::TYPES,
            e::mcp_registry::TYPES,
            e::webhooks::TYPES,
            e::watches::TYPES,
            e::files::TYPES,
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
            unsupported_message("graph_query"),
            "graph_query: the graph database is not available on this broker (needs Neo4j)"
        );
        assert_eq!(
            answer("vector_store", &serde_json::json!({}), true),
            Answer::Unsupported(
                "vector_store: vector search is not available on this broker (needs Qdrant)".into()
            )
        );
    }

    #[test]
    fn list_reads_get_typed_empty_replies() {
        let frame = serde_json::json!({"type": "mcp_schema", "server_name": "svc"});
        let Answer::Empty(body) = answer("mcp_schema", &frame, false) else {
            panic!("typed reply expected");
        };
        let wire = serde_json::to_value(Reply {
            body,
            req_id: Some("r1".into()),
        })
        .unwrap();
        assert_eq!(
            wire,
            serde_json::json!({"type": "mcp_schema_result", "server_name": "svc", "tools": [], "_reqId": "r1"})
        );
        let list = serde_json::to_value(Reply {
            body: EmptyReply::McpCatalogResult { services: vec![] },
            req_id: None,
        })
        .unwrap();
        assert_eq!(
            list,
            serde_json::json!({"type": "mcp_catalog_result", "services": []})
        );
    }
}
