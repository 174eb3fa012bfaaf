//! The peer-hosted MCP registry (extensions §14), without a transport.
//!
//! The registry (`cluster::mcp_registry`) is cluster-wide: (mesh, server name) → the
//! registration, naming its host member and host presence. A call made on any replica looks
//! the server up, opens a pending call (`callId` → caller presence, `_reqId`, deadline;
//! `service::peer_relay`'s machinery), routes `mcp_call_forward` to the host presence
//! wherever it is, and returns at once (§0.4); the host's `mcp_call_response` is accepted
//! only from the presence the call went to, and routed back to the caller's presence as
//! `mcp_call_result`. The host's socket closing fails its pending calls at once; the call
//! timer fails it after `MCP_CALL_TIMEOUT_MS`.
//!
//! Authorisation (**Ours:**): only the member that registered a name may replace or
//! unregister it (`forbidden`); a re-registration by that member through another presence
//! (on any replica) takes the name over. When a host presence ends for good, its
//! persistent entries stay offline (`online:false`, `offlineSince`) until its member says
//! `hello` again (`mcp_restored`), the others are removed (`mcp_unregistered`).

use serde_json::Value;
use tracing::warn;

use super::peer_relay::{self, OpenError};
use super::{Principal, ServiceCtx};
use crate::cluster::bus::MeshEvent;
use crate::cluster::mcp_registry::{Pending, PendingKind, Registration, Swap, Tool};
use crate::cluster::presence::{PeerRole, PresenceRecord};
use crate::ids::{self, now_ms};
use crate::protocol::{self, ext};
use crate::store::mcp_registry::StoredMcpServer;

/// How often a write retries after losing a compare-and-set race before giving up.
const SWAP_ATTEMPTS: usize = 4;

/// Why an MCP registry request was refused. For `mcp_call`, [`McpError::message`] is the
/// `mcp_call_result.error` text; for the other frames the `error` frame's
/// ([`McpError::code`]). [`McpError::metric_label`] is the `reason` of
/// `broker_mcp_requests_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpError {
    Invalid(&'static str),
    FieldTooLarge {
        what: &'static str,
        max: usize,
    },
    TooManyServers {
        max: usize,
    },
    /// A replace or unregister of a name another member registered.
    Forbidden {
        name: String,
    },
    NotFound {
        name: String,
    },
    /// A persistent entry whose host went away.
    Offline {
        name: String,
        host: String,
        since_ms: Option<i64>,
    },
    /// The host presence is not connected (its socket closed).
    HostGone {
        name: String,
    },
    TooManyPending {
        setting: &'static str,
        max: usize,
    },
    Unavailable(String),
}

impl McpError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            McpError::Invalid(_) => "invalid",
            McpError::FieldTooLarge { .. } => "field_too_large",
            McpError::TooManyServers { .. } => "too_many_servers",
            McpError::Forbidden { .. } => "forbidden",
            McpError::NotFound { .. } => "not_found",
            McpError::Offline { .. } => "offline",
            McpError::HostGone { .. } => "host_gone",
            McpError::TooManyPending { .. } => "too_many_pending",
            McpError::Unavailable(_) => "unavailable",
        }
    }

    /// The `error.code` (frames other than `mcp_call`).
    pub fn code(&self) -> &'static str {
        match self {
            McpError::Invalid(_) => "invalid",
            McpError::FieldTooLarge { .. } => "field_too_large",
            McpError::TooManyServers { .. } => "too_many_mcp_servers",
            McpError::Forbidden { .. } => "forbidden",
            McpError::NotFound { .. } => "not_found",
            McpError::Offline { .. } | McpError::HostGone { .. } => "not_found",
            McpError::TooManyPending { .. } => "too_many_pending",
            McpError::Unavailable(_) => "internal",
        }
    }

    /// The exact text (the spec's for `mcp_call`).
    pub fn message(&self) -> String {
        match self {
            McpError::Invalid(what) => format!("{what} is required"),
            McpError::FieldTooLarge { what, max } => format!("{what} is over {max}"),
            McpError::TooManyServers { max } => format!(
                "this mesh has {max} MCP servers registered, the most it may (MAX_MCP_SERVERS_PER_MESH)"
            ),
            McpError::Forbidden { name } => format!(
                "MCP server {name:?} was registered by another member: only that member may replace or unregister it"
            ),
            McpError::NotFound { name } => format!("MCP server {name:?} not found in mesh"),
            McpError::Offline {
                name,
                host,
                since_ms,
            } => match since_ms {
                Some(since) => format!(
                    "Server '{name}' is offline — hosted by {host} who disconnected {} ago. It will restore when they reconnect.",
                    ago(now_ms() - since)
                ),
                None => format!(
                    "Server '{name}' is offline — hosted by {host}. It will restore when they reconnect."
                ),
            },
            McpError::HostGone { name } => format!("MCP server {name:?} host disconnected"),
            McpError::TooManyPending { setting, max } => {
                format!("more than {max} peer requests waiting for an answer ({setting})")
            }
            McpError::Unavailable(e) => format!("MCP registry unavailable: {e}"),
        }
    }
}

impl std::fmt::Display for McpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for McpError {}

/// `<N>s`, `<N>m` or `<N>h`.
fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m", s / 60)
    } else {
        format!("{}h", s / 3600)
    }
}

fn unavailable(e: impl std::fmt::Display) -> McpError {
    McpError::Unavailable(e.to_string())
}

fn counted<T>(ctx: &ServiceCtx, result: Result<T, McpError>) -> Result<T, McpError> {
    if let Err(e) = &result {
        ctx.metrics().refuse_mcp(e.metric_label());
    }
    result
}

/// An `mcp_register`.
#[derive(Debug, Clone, PartialEq)]
pub struct Register {
    pub server_name: String,
    pub description: String,
    pub tools: Vec<Tool>,
    pub persistent: bool,
}

fn check(ctx: &ServiceCtx, req: &Register) -> Result<(), McpError> {
    let c = ctx.config();
    if req.server_name.is_empty() {
        return Err(McpError::Invalid("serverName"));
    }
    if req.server_name.len() > c.max_mcp_name_bytes {
        return Err(McpError::FieldTooLarge {
            what: "serverName bytes (MAX_MCP_NAME_BYTES)",
            max: c.max_mcp_name_bytes,
        });
    }
    if req.tools.len() > c.max_mcp_tools {
        return Err(McpError::FieldTooLarge {
            what: "the number of tools (MAX_MCP_TOOLS)",
            max: c.max_mcp_tools,
        });
    }
    if req.tools.iter().any(|t| t.name.is_empty()) {
        return Err(McpError::Invalid("a name of every tool"));
    }
    if req
        .tools
        .iter()
        .any(|t| t.name.len() > c.max_mcp_name_bytes)
    {
        return Err(McpError::FieldTooLarge {
            what: "a tool name, in bytes (MAX_MCP_NAME_BYTES)",
            max: c.max_mcp_name_bytes,
        });
    }
    let size = serde_json::to_vec(&(&req.description, &req.tools)).map_or(usize::MAX, |v| v.len());
    if size > c.max_mcp_registration_bytes {
        return Err(McpError::FieldTooLarge {
            what: "the registration's description and tools, as JSON bytes (MAX_MCP_REGISTRATION_BYTES)",
            max: c.max_mcp_registration_bytes,
        });
    }
    Ok(())
}

/// `mcp_register`: registers (or, for the same member, replaces) the server with the calling
/// presence as its host; returns its tool count. Every other presence of the mesh is told
/// (`mcp_registered`).
pub async fn register(ctx: &ServiceCtx, p: &Principal, req: Register) -> Result<usize, McpError> {
    counted(ctx, register_inner(ctx, p, req).await)
}

async fn register_inner(ctx: &ServiceCtx, p: &Principal, req: Register) -> Result<usize, McpError> {
    check(ctx, &req)?;
    let mesh_id = &p.mesh.id;
    let new = Registration {
        server_name: req.server_name.clone(),
        description: req.description,
        tools: req.tools,
        persistent: req.persistent,
        host_member_id: p.member.id.clone(),
        host_presence_id: p.presence_id.clone(),
        hosted_by: p.display_name.clone(),
        online: true,
        offline_since: None,
        registered_at: now_ms(),
    };
    let registry = ctx.mcp_registry();
    let max = ctx.config().max_mcp_servers_per_mesh;
    for _ in 0..SWAP_ATTEMPTS {
        let current = registry
            .server(mesh_id, &req.server_name)
            .await
            .map_err(unavailable)?;
        // A persistent entry the live registry lost (a Redis data loss) still holds its name.
        let owner = match &current {
            Some(c) => Some(c.host_member_id.clone()),
            None => stored_offline(ctx, mesh_id)
                .await
                .into_iter()
                .find(|s| s.server_name == req.server_name)
                .map(|s| s.host_member_id),
        };
        if owner.is_some_and(|m| m != p.member.id) {
            return Err(McpError::Forbidden {
                name: req.server_name,
            });
        }
        match registry
            .swap(mesh_id, &req.server_name, current.as_ref(), Some(&new), max)
            .await
            .map_err(unavailable)?
        {
            Swap::Done => {
                if new.persistent {
                    persist(ctx, mesh_id, &new).await;
                } else {
                    unpersist(ctx, mesh_id, &new.server_name).await;
                }
                let event = ext::mcp_registry::McpEvent::McpRegistered {
                    server_name: new.server_name.clone(),
                    description: new.description.clone(),
                    tools: new.tools.iter().map(|t| t.name.clone()).collect(),
                    hosted_by: new.hosted_by.clone(),
                };
                announce(ctx, mesh_id, Some(&p.presence_id), event).await;
                return Ok(new.tools.len());
            }
            Swap::Full => return Err(McpError::TooManyServers { max }),
            Swap::Conflict => continue,
        }
    }
    Err(McpError::Unavailable(
        "concurrent registrations of this name; try again".into(),
    ))
}

/// `mcp_unregister`: removes the server if the caller's member registered it (`false`: no
/// such server). Every other presence of the mesh is told (`mcp_unregistered`).
pub async fn unregister(ctx: &ServiceCtx, p: &Principal, name: &str) -> Result<bool, McpError> {
    counted(ctx, unregister_inner(ctx, p, name).await)
}

async fn unregister_inner(ctx: &ServiceCtx, p: &Principal, name: &str) -> Result<bool, McpError> {
    let mesh_id = &p.mesh.id;
    let registry = ctx.mcp_registry();
    for _ in 0..SWAP_ATTEMPTS {
        let Some(current) = registry.server(mesh_id, name).await.map_err(unavailable)? else {
            // Only stored (the live registry lost it): the stored entry is the registration.
            let Some(stored) = stored_offline(ctx, mesh_id)
                .await
                .into_iter()
                .find(|s| s.server_name == name)
            else {
                return Ok(false);
            };
            if stored.host_member_id != p.member.id {
                return Err(McpError::Forbidden { name: name.into() });
            }
            unpersist(ctx, mesh_id, name).await;
            let event = ext::mcp_registry::McpEvent::McpUnregistered {
                server_name: stored.server_name,
                hosted_by: stored.hosted_by,
            };
            announce(ctx, mesh_id, Some(&p.presence_id), event).await;
            return Ok(true);
        };
        if current.host_member_id != p.member.id {
            return Err(McpError::Forbidden { name: name.into() });
        }
        match registry
            .swap(mesh_id, name, Some(&current), None, 0)
            .await
            .map_err(unavailable)?
        {
            Swap::Done => {
                if current.persistent {
                    unpersist(ctx, mesh_id, name).await;
                }
                let event = ext::mcp_registry::McpEvent::McpUnregistered {
                    server_name: current.server_name,
                    hosted_by: current.hosted_by,
                };
                announce(ctx, mesh_id, Some(&p.presence_id), event).await;
                return Ok(true);
            }
            Swap::Full | Swap::Conflict => continue,
        }
    }
    Err(McpError::Unavailable(
        "concurrent changes of this name; try again".into(),
    ))
}

/// `mcp_list`: every registration of the mesh, by name.
pub async fn list(ctx: &ServiceCtx, p: &Principal) -> Result<Vec<Registration>, McpError> {
    let mut live = counted(
        ctx,
        ctx.mcp_registry()
            .servers(&p.mesh.id)
            .await
            .map_err(unavailable),
    )?;
    for stored in stored_offline(ctx, &p.mesh.id).await {
        if !live.iter().any(|r| r.server_name == stored.server_name) {
            live.push(stored);
        }
    }
    live.sort_by(|a, b| a.server_name.cmp(&b.server_name));
    Ok(live)
}

/// One registration as `mcp_list` shows it.
pub fn row(r: &Registration) -> ext::mcp_registry::ServerRow {
    ext::mcp_registry::ServerRow {
        name: r.server_name.clone(),
        description: r.description.clone(),
        hosted_by: r.hosted_by.clone(),
        tools: r
            .tools
            .iter()
            .map(|t| ext::mcp_registry::ToolRow {
                name: t.name.clone(),
                description: t.description.clone(),
            })
            .collect(),
        online: r.online,
        offline_since: r.offline_since.map(ids::iso8601_ms),
    }
}

/// An `mcp_call`.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub server_name: String,
    pub tool_name: String,
    pub args: Value,
    /// The caller's `_reqId`, echoed on `mcp_call_result`.
    pub req_id: Option<String>,
}

/// `mcp_call`: forwards the call to the host and returns at once; the host's result (or the
/// timeout, or the host's departure) reaches the caller later as `mcp_call_result`.
pub async fn call(ctx: &ServiceCtx, p: &Principal, req: Call) -> Result<(), McpError> {
    counted(ctx, call_inner(ctx, p, req).await)
}

async fn call_inner(ctx: &ServiceCtx, p: &Principal, req: Call) -> Result<(), McpError> {
    let mesh_id = &p.mesh.id;
    if req.server_name.is_empty() {
        return Err(McpError::NotFound {
            name: req.server_name,
        });
    }
    let Some(server) = ctx
        .mcp_registry()
        .server(mesh_id, &req.server_name)
        .await
        .map_err(unavailable)?
    else {
        return Err(
            match stored_offline(ctx, mesh_id)
                .await
                .into_iter()
                .find(|s| s.server_name == req.server_name)
            {
                Some(s) => McpError::Offline {
                    name: s.server_name,
                    host: s.hosted_by,
                    since_ms: s.offline_since,
                },
                None => McpError::NotFound {
                    name: req.server_name,
                },
            },
        );
    };
    if !server.online {
        return Err(McpError::Offline {
            name: server.server_name,
            host: server.hosted_by,
            since_ms: server.offline_since,
        });
    }
    let host_live = ctx
        .presence()
        .list(mesh_id)
        .await
        .map_err(unavailable)?
        .iter()
        .any(|r| r.presence_id == server.host_presence_id && r.is_live());
    if !host_live {
        return Err(McpError::HostGone {
            name: server.server_name,
        });
    }
    let call_id = uuid_v4();
    let forward = protocol::encode(&ext::mcp_registry::McpCallForward {
        call_id: call_id.clone(),
        server_name: server.server_name.clone(),
        tool_name: req.tool_name,
        args: req.args,
        caller_name: p.display_name.clone(),
    });
    let pending = Pending {
        id: call_id,
        kind: PendingKind::McpCall,
        requester_presence_id: p.presence_id.clone(),
        target_presence_id: server.host_presence_id,
        req_id: req.req_id,
        subject: server.server_name,
        deadline_ms: now_ms() + ctx.config().mcp_call_timeout.as_millis() as i64,
    };
    peer_relay::open_and_forward(ctx, mesh_id, pending, forward)
        .await
        .map_err(|e| match e {
            OpenError::TooMany { setting, max } => McpError::TooManyPending { setting, max },
            OpenError::Unavailable(e) => McpError::Unavailable(e),
        })
}

/// `mcp_call_response` from a host: delivered to the caller if `call_id` names a call still
/// open that was sent to this presence; dropped otherwise. Nothing is answered to the host.
pub async fn respond(
    ctx: &ServiceCtx,
    p: &Principal,
    call_id: &str,
    result: Option<Value>,
    error: Option<Value>,
) {
    let mesh_id = &p.mesh.id;
    if call_id.is_empty() {
        ctx.metrics().peer_request_finished("unmatched");
        return;
    }
    let pending = match ctx
        .mcp_registry()
        .take(mesh_id, call_id, Some(&p.presence_id))
        .await
    {
        Ok(Some(pending)) => pending,
        Ok(None) => {
            ctx.metrics().peer_request_finished("unmatched");
            return;
        }
        Err(e) => {
            warn!(error = %e, "mcp_call_response not delivered");
            ctx.metrics().peer_request_finished("dropped");
            return;
        }
    };
    let frame = match pending.kind {
        PendingKind::McpCall => protocol::encode(&ext::mcp_registry::McpCallResult {
            result,
            error,
            req_id: pending.req_id.clone(),
        }),
        // A relay target answering with an MCP response: its requester is told.
        PendingKind::File => protocol::encode(&ext::peer_relay::FileResponseForward {
            file_path: pending.subject.clone(),
            content: None,
            error: Some("the target answered with an MCP call response".into()),
            req_id: pending.req_id.clone(),
        }),
        PendingKind::Dir => protocol::encode(&ext::peer_relay::DirResponseForward {
            dir_path: pending.subject.clone(),
            entries: None,
            error: Some("the target answered with an MCP call response".into()),
            req_id: pending.req_id.clone(),
        }),
    };
    match peer_relay::deliver(ctx, mesh_id, &pending.requester_presence_id, frame).await {
        Ok(()) => ctx.metrics().peer_request_finished("answered"),
        Err(e) => {
            warn!(error = %e, "mcp_call_result not delivered");
            ctx.metrics().peer_request_finished("dropped");
        }
    }
}

/// A presence's socket closed (into grace or for good): the calls and relayed requests
/// waiting on it fail at once.
pub async fn socket_closed(ctx: &ServiceCtx, mesh_id: &str, presence_id: &str) {
    peer_relay::target_gone(ctx, mesh_id, presence_id).await;
}

/// A presence ended for good (grace expiry, kick, ban, replacement, the reaper of a dead
/// replica): what waits on it fails, its persistent registrations go offline and the others
/// are removed (`mcp_unregistered` to the rest of the mesh).
pub async fn presence_ended(ctx: &ServiceCtx, record: &PresenceRecord) {
    let mesh_id = &record.mesh_id;
    // Registrations first, so that a caller told of the departure finds the registry
    // already changed.
    evict(ctx, record).await;
    peer_relay::target_gone(ctx, mesh_id, &record.presence_id).await;
}

async fn evict(ctx: &ServiceCtx, record: &PresenceRecord) {
    let mesh_id = &record.mesh_id;
    let servers = match ctx.mcp_registry().servers(mesh_id).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "MCP registrations of an ended presence not evicted");
            return;
        }
    };
    let now = now_ms();
    for current in servers
        .into_iter()
        .filter(|r| r.online && r.host_presence_id == record.presence_id)
    {
        let next = current.persistent.then(|| Registration {
            online: false,
            offline_since: Some(now),
            ..current.clone()
        });
        // A conflict means the name was re-registered meanwhile: the newer entry stands.
        match ctx
            .mcp_registry()
            .swap(
                mesh_id,
                &current.server_name,
                Some(&current),
                next.as_ref(),
                0,
            )
            .await
        {
            Ok(Swap::Done) if next.is_some() => {
                if let Some(offline) = &next {
                    persist(ctx, mesh_id, offline).await;
                }
            }
            Ok(Swap::Done) => {
                let event = ext::mcp_registry::McpEvent::McpUnregistered {
                    server_name: current.server_name,
                    hosted_by: current.hosted_by,
                };
                announce(ctx, mesh_id, Some(&record.presence_id), event).await;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "MCP registration of an ended presence not evicted"),
        }
    }
}

/// A member completed a `hello` with a new presence: its offline persistent registrations
/// come back online with that presence as host (`mcp_restored` to the whole mesh).
pub async fn member_returned(ctx: &ServiceCtx, record: &PresenceRecord) {
    if record.peer_role != PeerRole::ControlPlane {
        return;
    }
    let mesh_id = &record.mesh_id;
    let servers = match ctx.mcp_registry().servers(mesh_id).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "MCP registrations of a returning member not restored");
            return;
        }
    };
    let mut offline: Vec<(Option<Registration>, Registration)> = servers
        .iter()
        .filter(|r| !r.online && r.host_member_id == record.member_id)
        .map(|r| (Some(r.clone()), r.clone()))
        .collect();
    for stored in stored_offline(ctx, mesh_id).await {
        if stored.host_member_id == record.member_id
            && !servers.iter().any(|r| r.server_name == stored.server_name)
        {
            offline.push((None, stored));
        }
    }
    for (expected, current) in offline {
        let next = Registration {
            online: true,
            offline_since: None,
            host_presence_id: record.presence_id.clone(),
            hosted_by: record.display_name.clone(),
            ..current.clone()
        };
        match ctx
            .mcp_registry()
            .swap(
                mesh_id,
                &current.server_name,
                expected.as_ref(),
                Some(&next),
                0,
            )
            .await
        {
            Ok(Swap::Done) => {
                let event = ext::mcp_registry::McpEvent::McpRestored {
                    server_name: next.server_name,
                    hosted_by: next.hosted_by,
                };
                announce(ctx, mesh_id, None, event).await;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "MCP registration of a returning member not restored"),
        }
    }
}

/// Keeps a persistent registration in the store (it outlives the live registry). A store
/// failure is logged: the registration stands live, only a restart would lose it.
async fn persist(ctx: &ServiceCtx, mesh_id: &str, r: &Registration) {
    let registration = match serde_json::to_string(r) {
        Ok(text) => text,
        Err(e) => return warn!(error = %e, "persistent MCP registration not encoded"),
    };
    let stored = StoredMcpServer {
        mesh_id: mesh_id.to_string(),
        server_name: r.server_name.clone(),
        host_member_id: r.host_member_id.clone(),
        registration,
        updated_at: now_ms(),
    };
    if let Err(e) = ctx.store().save_mcp_server(stored).await {
        warn!(error = %e, "persistent MCP registration not stored");
    }
}

/// Forgets a stored registration (unregistered, or replaced by a non-persistent one).
async fn unpersist(ctx: &ServiceCtx, mesh_id: &str, name: &str) {
    if let Err(e) = ctx.store().delete_mcp_server(mesh_id, name).await {
        warn!(error = %e, "persistent MCP registration not deleted");
    }
}

/// The mesh's stored (persistent) registrations, as offline entries: what they are when
/// the live registry does not have them. A store failure yields none (logged).
async fn stored_offline(ctx: &ServiceCtx, mesh_id: &str) -> Vec<Registration> {
    let limit = match ctx.config().max_mcp_servers_per_mesh {
        0 => usize::MAX,
        n => n,
    };
    let rows = match ctx.store().mcp_servers(mesh_id, limit).await {
        Ok(rows) => rows,
        Err(e) => {
            warn!(error = %e, "persistent MCP registrations unavailable");
            return Vec::new();
        }
    };
    rows.into_iter()
        .filter_map(|row| {
            let r: Registration = serde_json::from_str(&row.registration).ok()?;
            Some(Registration {
                online: false,
                offline_since: r.offline_since.or(Some(row.updated_at)),
                ..r
            })
        })
        .collect()
}

/// Pushes a registry event to the mesh's live presences, but `except`.
async fn announce(
    ctx: &ServiceCtx,
    mesh_id: &str,
    except: Option<&str>,
    event: ext::mcp_registry::McpEvent,
) {
    let records = match ctx.presence().list(mesh_id).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "presence unavailable; MCP registry event not published");
            return;
        }
    };
    let presence_ids: Vec<String> = records
        .into_iter()
        .filter(|r| r.is_live() && Some(r.presence_id.as_str()) != except)
        .map(|r| r.presence_id)
        .collect();
    if presence_ids.is_empty() {
        return;
    }
    let frame = protocol::encode(&ext::mcp_registry::McpSystemPush::new(
        mesh_id,
        event,
        now_ms(),
    ));
    if frame.len() > ctx.config().outbound_queue_bytes {
        ctx.metrics().reply_too_large("system_event");
        return;
    }
    let event = MeshEvent::Deliver {
        presence_ids: presence_ids.into(),
        priority: None,
        frame,
        trace: None,
    };
    if let Err(e) = ctx.publish(mesh_id, event).await {
        warn!(error = %e, "MCP registry event not published");
    }
}

/// A random (version 4) UUID, the form of a `callId`.
fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_are_uuids_and_ages_read_like_the_reference() {
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(uuid_v4(), id);
        assert_eq!(ago(5_000), "5s");
        assert_eq!(ago(125_000), "2m");
        assert_eq!(ago(7_300_000), "2h");
        assert_eq!(
            McpError::NotFound { name: "fs".into() }.message(),
            "MCP server \"fs\" not found in mesh"
        );
        assert_eq!(
            McpError::Offline {
                name: "fs".into(),
                host: "alice".into(),
                since_ms: None
            }
            .message(),
            "Server 'fs' is offline — hosted by alice. It will restore when they reconnect."
        );
    }
}
