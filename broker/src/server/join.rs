//! `POST /join`: enrolment with a v1 invite signed by the mesh's owner key (spec §6).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{Value, json};

use super::{BodyError, HttpResponse, json_response, read_json};
use crate::ids::now_ms;
use crate::node::Node;
use crate::protocol::signing::{self, InviteFields};
use crate::store::{NewMember, StoreError};

fn refuse(status: StatusCode, error: impl Into<String>) -> HttpResponse {
    json_response(status, &json!({"ok": false, "error": error.into()}))
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a str, String> {
    v.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{name} must be a string"))
}

/// The invite payload, given as a JSON object or as the base64url text of the link.
fn payload_of(body: &Value) -> Result<Value, String> {
    match body.get("invite_payload") {
        Some(p @ Value::Object(_)) => Ok(p.clone()),
        Some(Value::String(s)) => {
            let raw = URL_SAFE_NO_PAD
                .decode(s.trim_end_matches('='))
                .map_err(|_| "invite_payload is not base64url".to_string())?;
            serde_json::from_slice(&raw).map_err(|_| "invite_payload is not JSON".to_string())
        }
        _ => Err("invite_payload must be an object".into()),
    }
}

pub async fn handle(node: &Node, req: Request<Incoming>) -> HttpResponse {
    let body = match read_json(req, node.config.max_message_bytes).await {
        Ok(v) => v,
        Err(BodyError::TooLarge) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
        Err(BodyError::Invalid(m)) => return refuse(StatusCode::BAD_REQUEST, m),
    };
    match enrol(node, &body).await {
        Ok(resp) => resp,
        Err(e) => refuse(StatusCode::BAD_REQUEST, e),
    }
}

async fn enrol(node: &Node, body: &Value) -> Result<HttpResponse, String> {
    let token = field(body, "invite_token")?;
    let peer_pubkey = field(body, "peer_pubkey")?;
    let display_name = field(body, "display_name")?.trim();
    if !signing::is_key_hex(peer_pubkey) {
        return Err("peer_pubkey must be 64 lowercase hex".into());
    }
    if display_name.is_empty() {
        return Err("display_name must not be empty".into());
    }
    let payload = payload_of(body)?;
    let unavailable = |e: StoreError| e.to_string();
    let invite = node
        .store
        .invite_by_token(token)
        .await
        .map_err(unavailable)?
        .ok_or("unknown invite token")?;
    let mesh = node
        .store
        .mesh(&invite.mesh_id)
        .await
        .map_err(unavailable)?
        .ok_or("the invite's mesh no longer exists")?;
    let num = |name: &str| {
        payload
            .get(name)
            .and_then(Value::as_i64)
            .ok_or(format!("invite payload lacks {name}"))
    };
    let fields = InviteFields {
        v: num("v")?,
        mesh_id: field(&payload, "mesh_id")?,
        mesh_slug: field(&payload, "mesh_slug")?,
        broker_url: field(&payload, "broker_url")?,
        expires_at: num("expires_at")?,
        mesh_root_key: field(&payload, "mesh_root_key")?,
        role: field(&payload, "role")?,
        owner_pubkey: field(&payload, "owner_pubkey")?,
    };
    if fields.v != 1 {
        return Err(format!("unsupported invite version {}", fields.v));
    }
    if fields.mesh_id != mesh.id
        || fields.owner_pubkey != mesh.owner_pubkey
        || fields.role != invite.role.as_str()
    {
        return Err("invite payload does not match the invite".into());
    }
    signing::verify(
        &mesh.owner_pubkey,
        &signing::invite_text(&fields),
        field(&payload, "signature")?,
    )
    .map_err(|_| "invite signature does not verify against the mesh owner key")?;
    let now_s = now_ms() / 1000;
    if fields.expires_at <= now_s {
        return Err("invite has expired".into());
    }
    let member = NewMember {
        pubkey: peer_pubkey.to_string(),
        display_name: display_name.to_string(),
        role: invite.role,
        user_id: None,
        default_groups: Vec::new(),
        role_tag: None,
    };
    let enrolment = node
        .store
        .redeem_invite(&invite.code, member, now_s)
        .await
        .map_err(unavailable)?;
    if !enrolment.already_member {
        node.members_changed(&mesh.id).await;
    }
    if enrolment.member.revoked_at.is_some() {
        return Err("this key was removed from the mesh".into());
    }
    let mut answer = json!({"ok": true, "memberId": enrolment.member.id});
    if enrolment.already_member {
        answer["alreadyMember"] = json!(true);
    }
    Ok(json_response(StatusCode::OK, &answer))
}
