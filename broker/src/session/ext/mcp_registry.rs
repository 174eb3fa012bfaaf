//! The WebSocket adapter of the peer-hosted MCP registry (extensions §14).
//!
//! `mcp_register` gets `mcp_register_ack`, `mcp_list` gets `mcp_list_result`; `mcp_call`
//! gets `mcp_call_result` later (the host's answer, pushed through the bus, so the frame
//! queue never waits on the host, §0.4), or at once with the error text when it cannot be
//! forwarded. `mcp_unregister` and `mcp_call_response` get nothing, except
//! `error{code:"forbidden"}` for an unregister by another member (**Ours:**). Bad input is an
//! `error`.

use crate::cluster::mcp_registry::Tool;
use crate::protocol;
use crate::protocol::ext::mcp_registry::{McpCallResult, McpFrame, McpListResult, McpRegisterAck};
use crate::service::mcp_registry::{self, Call, Register};
use crate::session::Session;

/// Handles one frame whose `type` is in [`crate::protocol::ext::mcp_registry::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let frame: McpFrame = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &format!("invalid {kind}: {e}"), req_id),
    };
    let (svc, p) = (&s.svc, &s.attached.principal);
    match frame {
        McpFrame::McpRegister {
            server_name,
            description,
            tools,
            persistent,
        } => {
            let req = Register {
                server_name: server_name.clone(),
                description,
                tools: tools
                    .into_iter()
                    .map(|t| Tool {
                        name: t.name,
                        description: t.description,
                        input_schema: t.input_schema,
                    })
                    .collect(),
                persistent,
            };
            match mcp_registry::register(svc, p, req).await {
                Ok(tool_count) => s.reply(protocol::encode(&McpRegisterAck {
                    server_name,
                    tool_count,
                    req_id: req_id.map(str::to_string),
                })),
                Err(e) => s.reply_error(e.code(), &e.message(), req_id),
            }
        }
        McpFrame::McpUnregister { server_name } => {
            if let Err(e) = mcp_registry::unregister(svc, p, &server_name).await {
                s.reply_error(e.code(), &e.message(), req_id);
            }
        }
        McpFrame::McpList {} => match mcp_registry::list(svc, p).await {
            Ok(servers) => {
                let frame = protocol::encode(&McpListResult {
                    servers: servers.iter().map(mcp_registry::row).collect(),
                    req_id: req_id.map(str::to_string),
                });
                super::state::reply_bounded(s, frame, "mcp_list_result", req_id);
            }
            Err(e) => s.reply_error(e.code(), &e.message(), req_id),
        },
        McpFrame::McpCall {
            server_name,
            tool_name,
            args,
        } => {
            let req = Call {
                server_name,
                tool_name,
                args,
                req_id: req_id.map(str::to_string),
            };
            if let Err(e) = mcp_registry::call(svc, p, req).await {
                s.reply(protocol::encode(&McpCallResult {
                    result: None,
                    error: Some(serde_json::Value::String(e.message())),
                    req_id: req_id.map(str::to_string),
                }));
            }
        }
        McpFrame::McpCallResponse {
            call_id,
            result,
            error,
        } => mcp_registry::respond(svc, p, &call_id, result, error).await,
    }
}
