//! The operator API (spec §9): meshes, members, grants, invites and audit verification,
//! behind the admin bearer token; beyond the spec, the paged list of meshes and the
//! deletion of a mesh or a member (docs/protocol.md, "Operator API").

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HOST};
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{BodyError, HttpResponse, Surface, json_response, read_json};
use crate::auth::bearer_matches;
use crate::cluster::bus::{AfterClose, MeshEvent};
use crate::cluster::presence::PresenceRecord;
use crate::ids::{self, now_ms};
use crate::node::Node;
use crate::protocol::frames::PeerLeft;
use crate::protocol::signing::{self, InviteFields};
use crate::protocol::{Group, SystemEvent, codes};
use crate::routing::ALL_CAPS;
use crate::store::{Invite, Mesh, NewMember, Role, StoreError};

/// Default lifetime of an invite.
const DEFAULT_INVITE_SECONDS: i64 = 7 * 24 * 3600;

/// Meshes per page of `GET /api/v1/meshes` when `limit` is not given, and the most a
/// page may hold (the answer is built in memory).
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

type ApiResult = Result<HttpResponse, (StatusCode, String)>;

fn bad(msg: impl Into<String>) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, msg.into())
}

fn store_error(e: StoreError) -> (StatusCode, String) {
    match e {
        StoreError::NotFound => (StatusCode::NOT_FOUND, "not found".into()),
        StoreError::Conflict(m) => (StatusCode::CONFLICT, m),
        StoreError::Invalid(m) => (StatusCode::BAD_REQUEST, m),
        StoreError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
        StoreError::OutcomeUnknown(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
    }
}

pub async fn handle(node: &Arc<Node>, req: Request<Incoming>) -> HttpResponse {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = node.config.admin_token.as_deref().unwrap_or_default();
    if token.is_empty() || !bearer_matches(header, token) {
        return json_response(StatusCode::UNAUTHORIZED, &json!({"error": "unauthorized"}));
    }
    match dispatch(node, req).await {
        Ok(resp) => resp,
        Err((status, error)) => json_response(status, &json!({"error": error})),
    }
}

async fn body<T: for<'de> Deserialize<'de>>(
    node: &Node,
    req: Request<Incoming>,
) -> Result<T, (StatusCode, String)> {
    let value = match read_json(req, node.config.max_message_bytes).await {
        Ok(v) => v,
        Err(BodyError::TooLarge) => {
            return Err((StatusCode::PAYLOAD_TOO_LARGE, "body too large".into()));
        }
        Err(BodyError::Invalid(m)) => return Err(bad(m)),
    };
    serde_json::from_value(value).map_err(|e| bad(format!("invalid body: {e}")))
}

async fn dispatch(node: &Arc<Node>, req: Request<Incoming>) -> ApiResult {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').skip(3).collect();
    let method = req.method().clone();
    match (method, segments.as_slice()) {
        (_, ["users", ..]) => super::users::dispatch(node, req).await,
        (Method::POST, ["meshes"]) => create_mesh(node, req).await,
        (Method::GET, ["meshes"]) => list_meshes(node, req.uri().query()).await,
        (Method::GET, ["meshes", mesh_id]) => {
            let mesh = find_mesh(node, mesh_id).await?;
            Ok(json_response(StatusCode::OK, &mesh_json(&mesh)))
        }
        (Method::DELETE, ["meshes", mesh_id]) => delete_mesh(node, mesh_id).await,
        (Method::DELETE, ["meshes", mesh_id, "members", member_id]) => {
            delete_member(node, mesh_id, member_id).await
        }
        (Method::POST, ["meshes", mesh_id, "members"]) => add_member(node, mesh_id, req).await,
        (Method::GET, ["meshes", mesh_id, "members"]) => list_members(node, mesh_id).await,
        (Method::PUT, ["meshes", mesh_id, "members", member_id, "grants"]) => {
            update_grants(node, mesh_id, member_id, req).await
        }
        (Method::POST, ["meshes", mesh_id, "invites"]) => create_invite(node, mesh_id, req).await,
        (Method::GET, ["meshes", mesh_id, "audit", "verify"]) => {
            find_mesh(node, mesh_id).await?;
            let entries = node
                .store
                .audit_entries(mesh_id)
                .await
                .map_err(store_error)?;
            let v = crate::store::verify_audit(&entries);
            let mut body = json!({"valid": v.valid, "entries": v.entries});
            if let Some(at) = v.broken_at {
                body["brokenAt"] = json!(at);
            }
            Ok(json_response(StatusCode::OK, &body))
        }
        _ => Err((StatusCode::NOT_FOUND, "no such route".into())),
    }
}

async fn find_mesh(node: &Node, mesh_id: &str) -> Result<Mesh, (StatusCode, String)> {
    node.store
        .mesh(mesh_id)
        .await
        .map_err(store_error)?
        .ok_or((StatusCode::NOT_FOUND, format!("no mesh {mesh_id:?}")))
}

fn mesh_json(m: &Mesh) -> Value {
    json!({"id": m.id, "slug": m.slug, "name": m.name, "ownerPubkey": m.owner_pubkey, "createdAt": ids::iso8601_ms(m.created_at)})
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateMesh {
    name: String,
    slug: Option<String>,
    owner_user_id: Option<String>,
}

fn slugify(name: &str) -> String {
    let slug: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    slug.split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

async fn create_mesh(node: &Node, req: Request<Incoming>) -> ApiResult {
    let b: CreateMesh = body(node, req).await?;
    if b.name.trim().is_empty() {
        return Err(bad("name must not be empty"));
    }
    let slug = match b.slug {
        Some(s)
            if s.is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            return Err(bad("slug may hold only letters, digits, '-' and '_'"));
        }
        Some(s) => s,
        None => format!("{}-{}", slugify(&b.name), ids::random_id(6).to_lowercase()),
    };
    let seed = ids::random_seed();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let mesh = Mesh {
        id: ids::random_id(32),
        slug,
        name: b.name,
        owner_user_id: b.owner_user_id,
        owner_seed_hex: hex::encode(seed),
        owner_pubkey: signing::pubkey_hex(&key),
        root_key: URL_SAFE_NO_PAD.encode(ids::random_seed()),
        created_at: now_ms(),
    };
    let mesh = node.store.create_mesh(mesh).await.map_err(store_error)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"id": mesh.id, "slug": mesh.slug, "name": mesh.name, "ownerPubkey": mesh.owner_pubkey}),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AddMember {
    pubkey: String,
    display_name: String,
    role: Option<String>,
    user_id: Option<String>,
    default_groups: Option<Vec<Group>>,
    role_tag: Option<String>,
}

fn parse_role(role: Option<&str>) -> Result<Role, (StatusCode, String)> {
    match role {
        None => Ok(Role::Member),
        Some(r) => Role::parse(r).ok_or_else(|| bad("role must be \"admin\" or \"member\"")),
    }
}

async fn add_member(node: &Node, mesh_id: &str, req: Request<Incoming>) -> ApiResult {
    let b: AddMember = body(node, req).await?;
    find_mesh(node, mesh_id).await?;
    if !signing::is_key_hex(&b.pubkey) {
        return Err(bad("pubkey must be 64 lowercase hex"));
    }
    if b.display_name.trim().is_empty() {
        return Err(bad("displayName must not be empty"));
    }
    let member = NewMember {
        pubkey: b.pubkey,
        display_name: b.display_name,
        role: parse_role(b.role.as_deref())?,
        user_id: b.user_id,
        default_groups: b.default_groups.unwrap_or_default(),
        role_tag: b.role_tag,
    };
    let m = node
        .store
        .add_member(mesh_id, member)
        .await
        .map_err(store_error)?;
    node.members_changed(mesh_id).await;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"id": m.id, "meshId": m.mesh_id, "pubkey": m.pubkey, "displayName": m.display_name, "role": m.role.as_str()}),
    ))
}

async fn list_members(node: &Node, mesh_id: &str) -> ApiResult {
    find_mesh(node, mesh_id).await?;
    let members = node.store.members(mesh_id).await.map_err(store_error)?;
    let records = node.presence.list(mesh_id).await.unwrap_or_default();
    let list: Vec<Value> = members
        .iter()
        .map(|m| {
            let online = records.iter().any(|r| r.member_id == m.id && r.is_live());
            json!({"id": m.id, "pubkey": m.pubkey, "displayName": m.display_name, "role": m.role.as_str(),
                "revokedAt": m.revoked_at.map(ids::iso8601_ms), "online": online})
        })
        .collect();
    Ok(json_response(StatusCode::OK, &json!({"members": list})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Grants {
    grants: BTreeMap<String, Option<Vec<String>>>,
}

async fn update_grants(
    node: &Node,
    mesh_id: &str,
    member_id: &str,
    req: Request<Incoming>,
) -> ApiResult {
    let b: Grants = body(node, req).await?;
    for (sender, caps) in &b.grants {
        if !signing::is_key_hex(sender) {
            return Err(bad(format!("grant key {sender:?} is not a 64-hex pubkey")));
        }
        if let Some(bad_cap) = caps
            .iter()
            .flatten()
            .find(|c| !ALL_CAPS.contains(&c.as_str()))
        {
            return Err(bad(format!(
                "unknown capability {bad_cap:?} (known: {})",
                ALL_CAPS.join(", ")
            )));
        }
    }
    find_mesh(node, mesh_id).await?;
    let merged = node
        .store
        .update_grants(mesh_id, member_id, b.grants)
        .await
        .map_err(store_error)?;
    node.members_changed(mesh_id).await;
    Ok(json_response(StatusCode::OK, &json!({"grants": merged})))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateInvite {
    role: Option<String>,
    expires_in_seconds: Option<i64>,
    max_uses: Option<u32>,
}

async fn create_invite(node: &Node, mesh_id: &str, req: Request<Incoming>) -> ApiResult {
    let internal = req.extensions().get::<Surface>() == Some(&Surface::Internal);
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:7900")
        .to_string();
    let b: CreateInvite = body(node, req).await?;
    let mesh = find_mesh(node, mesh_id).await?;
    let role = parse_role(b.role.as_deref())?;
    let lifetime = b.expires_in_seconds.unwrap_or(DEFAULT_INVITE_SECONDS);
    if lifetime <= 0 {
        return Err(bad("expiresInSeconds must be positive"));
    }
    // No wrap to a negative expiry, and an `expires_at` every JSON client reads exactly.
    const MAX_EXPIRES_AT: i64 = (1 << 53) - 1;
    if (now_ms() / 1000)
        .checked_add(lifetime)
        .is_none_or(|at| at > MAX_EXPIRES_AT)
    {
        return Err(bad(format!(
            "expiresInSeconds is out of range: the expiry must be at most {MAX_EXPIRES_AT} (Unix seconds)"
        )));
    }
    if b.max_uses == Some(0) {
        return Err(bad("maxUses must be at least 1"));
    }
    let broker_url = match &node.config.accounts.public_ws_url {
        Some(url) => url.clone(),
        // The Host of a request to the internal listener names an address that serves no
        // WebSocket: an invite carrying it would be useless.
        None if internal => {
            return Err((
                StatusCode::CONFLICT,
                "invites made through the internal listener need BROKER_PUBLIC_WS_URL or BROKER_PUBLIC_URL (where clients reach the broker)".into(),
            ));
        }
        None => format!("ws://{host}/ws"),
    };
    let expires_at = now_ms() / 1000 + lifetime;
    let fields = InviteFields {
        v: 1,
        mesh_id: &mesh.id,
        mesh_slug: &mesh.slug,
        broker_url: &broker_url,
        expires_at,
        mesh_root_key: &mesh.root_key,
        role: role.as_str(),
        owner_pubkey: &mesh.owner_pubkey,
    };
    let key = signing::signing_key_from_seed_hex(&mesh.owner_seed_hex).map_err(|_| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "mesh owner key is unreadable".to_string(),
        )
    })?;
    let signature = signing::sign_hex(&key, &signing::invite_text(&fields));
    let code = ids::random_id(10);
    // `code` is outside the signed text (additive): it makes each invite's token unique.
    let payload = json!({
        "code": code, "v": 1, "mesh_id": mesh.id, "mesh_slug": mesh.slug, "broker_url": broker_url, "expires_at": expires_at,
        "mesh_root_key": mesh.root_key, "role": role.as_str(), "owner_pubkey": mesh.owner_pubkey, "signature": signature,
    });
    let token = URL_SAFE_NO_PAD.encode(payload.to_string());
    let invite = Invite {
        code,
        token: token.clone(),
        mesh_id: mesh.id.clone(),
        role,
        expires_at,
        max_uses: b.max_uses,
        uses: 0,
        payload: payload.clone(),
    };
    let code = invite.code.clone();
    node.store
        .create_invite(invite)
        .await
        .map_err(store_error)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"code": code, "token": token, "link": format!("ic://join/{token}"), "payload": payload}),
    ))
}

/// `GET /api/v1/meshes?limit=&cursor=`: meshes in id order, `nextCursor` while more follow.
async fn list_meshes(node: &Node, query: Option<&str>) -> ApiResult {
    let mut limit = DEFAULT_PAGE;
    let mut after = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| bad(format!("limit must be an integer from 1 to {MAX_PAGE}")))?;
            }
            "cursor" if !value.is_empty() => {
                let id = URL_SAFE_NO_PAD
                    .decode(value)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| bad("cursor is not one this API returned"))?;
                after = Some(id);
            }
            "cursor" => {}
            other => {
                return Err(bad(format!(
                    "unknown query parameter {other:?} (known: limit, cursor)"
                )));
            }
        }
    }
    // One more than asked tells whether another page follows.
    let mut page = node
        .store
        .list_meshes(after.as_deref(), limit + 1)
        .await
        .map_err(store_error)?;
    let more = page.len() > limit;
    page.truncate(limit);
    let next = more
        .then(|| page.last().map(|m| URL_SAFE_NO_PAD.encode(&m.id)))
        .flatten();
    let meshes: Vec<Value> = page.iter().map(mesh_json).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"meshes": meshes, "nextCursor": next}),
    ))
}

/// `DELETE /api/v1/meshes/{meshId}`: the mesh and all it owns are deleted in one
/// transaction (its audit chain with it), every replica drops its cached member rows, and
/// every socket of the mesh, on whichever replica, is closed `4003 removed`.
async fn delete_mesh(node: &Arc<Node>, mesh_id: &str) -> ApiResult {
    if !node.store.delete_mesh(mesh_id).await.map_err(store_error)? {
        return Err((StatusCode::NOT_FOUND, format!("no mesh {mesh_id:?}")));
    }
    node.members_changed(mesh_id).await;
    let closed = remove_presences(node, mesh_id, |_| true, false).await;
    // A write that raced the delete (a send or an audit append accepted a moment before)
    // may have left a row under the mesh's id: purge again now that no socket is left.
    if let Err(e) = node.store.delete_mesh(mesh_id).await {
        tracing::warn!(mesh_id, error = %e, "second purge of a deleted mesh failed");
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"id": mesh_id, "deleted": true, "closedConnections": closed}),
    ))
}

/// `DELETE /api/v1/meshes/{meshId}/members/{memberId}`: the member's row, its queue,
/// saved state and grants entries are deleted, every replica drops its cached member rows,
/// its sockets are closed `4003 removed` (the rest of the mesh sees `peer_left`), and a
/// `member_deleted` event is appended to the audit chain, which stays verifiable.
async fn delete_member(node: &Arc<Node>, mesh_id: &str, member_id: &str) -> ApiResult {
    find_mesh(node, mesh_id).await?;
    let member = node
        .store
        .member(mesh_id, member_id)
        .await
        .map_err(store_error)?
        .ok_or((StatusCode::NOT_FOUND, format!("no member {member_id:?}")))?;
    if !node
        .store
        .delete_member(mesh_id, member_id)
        .await
        .map_err(store_error)?
    {
        return Err((StatusCode::NOT_FOUND, format!("no member {member_id:?}")));
    }
    node.members_changed(mesh_id).await;
    let closed = remove_presences(node, mesh_id, |r| r.member_id == member_id, true).await;
    node.audit(
        mesh_id,
        "member_deleted",
        None,
        json!({"memberId": member.id, "pubkey": member.pubkey, "displayName": member.display_name}),
    );
    Ok(json_response(
        StatusCode::OK,
        &json!({"id": member_id, "deleted": true, "closedConnections": closed}),
    ))
}

/// Closes the sockets of the presences `which` selects, on whichever replica holds them,
/// `4003 removed`, and removes their presence records (live and in grace); returns how
/// many sockets were closed. The closes travel as `MeshEvent::Close` with
/// `AfterClose::Grace`: the closing replica only releases the record, which is gone by
/// then, so it saves no peer state and appends nothing for a member that no longer
/// exists. With `announce`, the rest of the mesh is told `peer_left` and the chain gets
/// its `peer_left`, as for any presence that ends.
///
/// A presence list that cannot be read (Redis down) leaves the sockets open: they are
/// refused at their next send (the member rows are gone) and their records expire.
async fn remove_presences(
    node: &Arc<Node>,
    mesh_id: &str,
    which: impl Fn(&PresenceRecord) -> bool,
    announce: bool,
) -> usize {
    let records = match node.presence.list(mesh_id).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(mesh_id, error = %e, "presences of a deleted member or mesh not listed; their sockets stay open until their next send");
            return 0;
        }
    };
    let (hit, rest): (Vec<PresenceRecord>, Vec<PresenceRecord>) =
        records.into_iter().partition(|r| which(r));
    let live: Vec<String> = hit
        .iter()
        .filter(|r| r.is_live())
        .map(|r| r.conn_id.clone())
        .collect();
    let closed = live.len();
    if !live.is_empty() {
        let event = MeshEvent::Close {
            conn_ids: live,
            code: codes::REMOVED.code,
            reason: codes::REMOVED.reason.into(),
            after: AfterClose::Grace,
        };
        if let Err(e) = node.publish(mesh_id, event).await {
            tracing::warn!(mesh_id, error = %e, "close of removed sockets not published");
        }
    }
    let ctx = crate::service::ServiceCtx::new(node);
    for r in &hit {
        let removed = node
            .presence
            .remove(mesh_id, &r.presence_id, &r.conn_id)
            .await;
        let Ok(Some(record)) = removed else { continue };
        if announce {
            let to = crate::service::presence::join_leave_recipients(&rest, &record);
            let left = SystemEvent::PeerLeft(PeerLeft {
                name: record.display_name.clone(),
                pubkey: record.routing_key().to_string(),
            });
            crate::service::presence::announce(&ctx, mesh_id, to, left).await;
            node.audit(
                mesh_id,
                "peer_left",
                Some(&record.member_id),
                json!({"pubkey": record.routing_key()}),
            );
        }
    }
    closed
}
