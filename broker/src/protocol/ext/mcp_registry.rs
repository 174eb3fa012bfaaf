//! Frames of the peer-hosted MCP registry (extensions §14).
//!
//! A peer advertises an MCP server (`mcp_register`); other peers list the servers
//! (`mcp_list`) and call their tools (`mcp_call`). A call reaches the host as an
//! `mcp_call_forward{callId}` push and its `mcp_call_response{callId}` comes back to the
//! caller as `mcp_call_result{_reqId}`. Changes are announced as system pushes
//! ([`McpSystemPush`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::protocol::Priority;
use crate::protocol::frames::tag;

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[
    "mcp_register",
    "mcp_unregister",
    "mcp_list",
    "mcp_call",
    "mcp_call_response",
];

/// One tool as `mcp_register` announces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "empty_object")]
    pub input_schema: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// A client frame of this family. Fields the client may omit default, so that such a frame
/// is refused by the service with a clear error instead of `malformed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum McpFrame {
    #[serde(rename_all = "camelCase")]
    McpRegister {
        #[serde(default)]
        server_name: String,
        #[serde(default)]
        description: String,
        #[serde(default)]
        tools: Vec<ToolSpec>,
        #[serde(default)]
        persistent: bool,
    },
    #[serde(rename_all = "camelCase")]
    McpUnregister {
        #[serde(default)]
        server_name: String,
    },
    McpList {},
    #[serde(rename_all = "camelCase")]
    McpCall {
        #[serde(default)]
        server_name: String,
        #[serde(default)]
        tool_name: String,
        #[serde(default = "empty_object")]
        args: Value,
    },
    #[serde(rename_all = "camelCase")]
    McpCallResponse {
        #[serde(default)]
        call_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Value>,
    },
}

/// `mcp_register_ack{serverName, toolCount, _reqId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "mcp_register_ack", rename_all = "camelCase")]
pub struct McpRegisterAck {
    pub server_name: String,
    pub tool_count: usize,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One tool as `mcp_list` shows it (no schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolRow {
    pub name: String,
    pub description: String,
}

/// One server as `mcp_list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerRow {
    pub name: String,
    pub description: String,
    /// The host presence's display name.
    pub hosted_by: String,
    pub tools: Vec<ToolRow>,
    pub online: bool,
    /// ISO 8601 UTC (ms), only for a persistent entry whose host went away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_since: Option<String>,
}

/// `mcp_list_result{servers, _reqId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "mcp_list_result")]
pub struct McpListResult {
    pub servers: Vec<ServerRow>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `mcp_call_result{result?, error?, _reqId}`: the host's answer, or the broker's error
/// text (the CLI prints `error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "mcp_call_result")]
pub struct McpCallResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `mcp_call_forward{callId, serverName, toolName, args, callerName}`, pushed to the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "mcp_call_forward", rename_all = "camelCase")]
pub struct McpCallForward {
    /// A UUID; the host answers with `mcp_call_response{callId}`.
    pub call_id: String,
    pub server_name: String,
    pub tool_name: String,
    pub args: Value,
    /// The caller presence's display name.
    pub caller_name: String,
}

/// The data of the registry's system events (`event` / `eventData`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "eventData", rename_all = "snake_case")]
pub enum McpEvent {
    #[serde(rename_all = "camelCase")]
    McpRegistered {
        server_name: String,
        description: String,
        /// Tool names.
        tools: Vec<String>,
        hosted_by: String,
    },
    #[serde(rename_all = "camelCase")]
    McpUnregistered {
        server_name: String,
        hosted_by: String,
    },
    #[serde(rename_all = "camelCase")]
    McpRestored {
        server_name: String,
        hosted_by: String,
    },
}

/// A `push{subtype:"system", priority:"low"}` carrying an [`McpEvent`], of the same shape
/// as the core system events (`protocol::frames::SystemPush`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct McpSystemPush {
    #[serde(rename = "type")]
    pub kind: tag::Push,
    pub subtype: tag::System,
    #[serde(flatten)]
    pub event: McpEvent,
    pub message_id: String,
    pub mesh_id: String,
    /// Always `"system"`.
    pub sender_pubkey: String,
    /// Always `low`.
    pub priority: Priority,
    pub nonce: String,
    pub ciphertext: String,
    pub created_at: String,
}

impl McpSystemPush {
    pub fn new(mesh_id: &str, event: McpEvent, created_at_ms: i64) -> Self {
        McpSystemPush {
            kind: tag::Push,
            subtype: tag::System,
            event,
            message_id: crate::ids::random_id(24),
            mesh_id: mesh_id.to_string(),
            sender_pubkey: "system".into(),
            priority: Priority::Low,
            nonce: String::new(),
            ciphertext: String::new(),
            created_at: crate::ids::iso8601_ms(created_at_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_frames_have_the_spec_shapes() {
        let call: McpFrame = serde_json::from_value(json!({
            "type": "mcp_call", "serverName": "s", "toolName": "t", "args": {"x": 1}, "_reqId": "r"
        }))
        .unwrap();
        assert_eq!(
            call,
            McpFrame::McpCall {
                server_name: "s".into(),
                tool_name: "t".into(),
                args: json!({"x": 1})
            }
        );
        let list: McpFrame = serde_json::from_value(json!({"type": "mcp_list"})).unwrap();
        assert_eq!(list, McpFrame::McpList {});
        let push = serde_json::to_value(McpSystemPush::new(
            "m",
            McpEvent::McpUnregistered {
                server_name: "s".into(),
                hosted_by: "h".into(),
            },
            0,
        ))
        .unwrap();
        assert_eq!(push["type"], "push");
        assert_eq!(push["subtype"], "system");
        assert_eq!(push["priority"], "low");
        assert_eq!(push["event"], "mcp_unregistered");
        assert_eq!(
            push["eventData"],
            json!({"serverName": "s", "hostedBy": "h"})
        );
        let result = serde_json::to_value(McpCallResult {
            result: None,
            error: Some(json!("MCP server \"s\" not found in mesh")),
            req_id: Some("r".into()),
        })
        .unwrap();
        assert_eq!(
            result,
            json!({"type": "mcp_call_result", "error": "MCP server \"s\" not found in mesh", "_reqId": "r"})
        );
    }
}
