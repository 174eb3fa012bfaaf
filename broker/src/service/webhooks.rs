//! The operations of webhooks (extensions §15): `create_webhook`, `list_webhooks`,
//! `delete_webhook`, and the inbound call (`POST /hook/<meshId>/<secret>`, adapted by
//! `server/webhook_in.rs`), without a transport.
//!
//! - **Secrets:** 32 random bytes as 64 lowercase hex, shown once in the `webhook_ack` of
//!   the create; the store keeps only their SHA-256. An inbound call is looked up by
//!   (mesh, hash of the presented secret), and the stored hash is compared to the computed
//!   one in constant time, so neither the lookup nor the comparison leaks the secret.
//! - **Authorisation (Ours):** any live member creates and lists; the list never shows a
//!   secret (the URL is masked); a delete is by the creator or an admin (owner or
//!   `role=admin`), and frees the name.
//! - **Bounds:** `MAX_WEBHOOKS_PER_MESH`, `MAX_WEBHOOK_NAME_BYTES`, the body
//!   (`WEBHOOK_MAX_BODY_BYTES`, checked by the route while reading) and a per-webhook rate
//!   (`WEBHOOK_RATE_PER_MIN`, a token bucket of the presence backend, so shared by every
//!   replica in cluster mode).
//! - **Cluster:** the call may reach any replica; the push goes on the mesh bus to the
//!   mesh's live presences as the registry lists them (all roles, hidden ones too, no
//!   grants, nothing queued), and `delivered` is their number.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use sha2::Digest;

use super::{Principal, ServiceCtx};
use crate::cluster::bus::MeshEvent;
use crate::ids;
use crate::protocol::ext::webhooks::{WebhookListing, WebhookPush};
use crate::store::webhooks::{Webhook, WebhookCreated};
use crate::store::{Role, StoreError};

/// The URL base when `BROKER_PUBLIC_URL` is unset (the reference's).
pub const DEFAULT_BASE_URL: &str = "https://ic.claudemesh.com";

/// Why a webhook request was refused; [`WebhookError::metric_label`] is the `reason` of
/// `broker_webhook_requests_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookError {
    /// No name (`name is required`), or one too long.
    Invalid(String),
    Exists {
        name: String,
    },
    TooMany {
        max: usize,
    },
    /// A delete of another member's webhook by a non-admin.
    Forbidden,
    Unavailable(String),
}

impl WebhookError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            WebhookError::Invalid(_) => "invalid",
            WebhookError::Exists { .. } => "exists",
            WebhookError::TooMany { .. } => "too_many_webhooks",
            WebhookError::Forbidden => "forbidden",
            WebhookError::Unavailable(_) => "store",
        }
    }

    /// The `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            WebhookError::Invalid(_) => "invalid_webhook",
            WebhookError::Exists { .. } => "webhook_exists",
            WebhookError::TooMany { .. } => "too_many_webhooks",
            WebhookError::Forbidden => "forbidden",
            WebhookError::Unavailable(_) => "internal",
        }
    }

    /// The exact wire text.
    pub fn message(&self) -> String {
        match self {
            WebhookError::Invalid(why) => why.clone(),
            WebhookError::Exists { name } => {
                format!("Webhook \"{name}\" already exists in this mesh")
            }
            WebhookError::TooMany { max } => {
                format!("this mesh already has {max} webhooks; delete one first")
            }
            WebhookError::Forbidden => {
                "only the webhook's creator or an admin can delete it".into()
            }
            WebhookError::Unavailable(e) => format!("webhooks unavailable: {e}"),
        }
    }
}

impl std::fmt::Display for WebhookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for WebhookError {}

fn unavailable(e: StoreError) -> WebhookError {
    WebhookError::Unavailable(e.to_string())
}

fn counted<T>(ctx: &ServiceCtx, result: Result<T, WebhookError>) -> Result<T, WebhookError> {
    if let Err(e) = &result {
        ctx.metrics().refuse_webhook(e.metric_label());
    }
    result
}

/// Lowercase hex SHA-256 of a secret: what the store keeps and looks up by.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Constant-time equality of two byte strings of the same length (a length mismatch is not
/// secret: every hash has the same length).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The URL base (`BROKER_PUBLIC_URL` without a trailing slash, else the default).
pub fn base_url(ctx: &ServiceCtx) -> String {
    ctx.config()
        .accounts
        .public_url
        .as_deref()
        .unwrap_or(DEFAULT_BASE_URL)
        .trim_end_matches('/')
        .to_string()
}

/// The inbound URL of a webhook.
pub fn hook_url(base: &str, mesh_id: &str, secret: &str) -> String {
    format!("{base}/hook/{mesh_id}/{secret}")
}

/// What a create returns: the secret is in it, and nowhere else ever again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub name: String,
    pub url: String,
    pub secret: String,
}

/// `create_webhook`.
pub async fn create(ctx: &ServiceCtx, p: &Principal, name: &str) -> Result<Created, WebhookError> {
    let result = async {
        let name = name.trim();
        if name.is_empty() {
            return Err(WebhookError::Invalid("name is required".into()));
        }
        let max_name = ctx.config().max_webhook_name_bytes;
        if name.len() > max_name {
            return Err(WebhookError::Invalid(format!(
                "name is over {max_name} bytes (MAX_WEBHOOK_NAME_BYTES)"
            )));
        }
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes[..]);
        let secret = hex::encode(bytes);
        let hook = Webhook {
            id: ids::random_id(32),
            mesh_id: p.mesh.id.clone(),
            name: name.to_string(),
            secret_hash: secret_hash(&secret),
            creator_member_id: p.member.id.clone(),
            created_at: ids::now_ms(),
        };
        let max = ctx.config().max_webhooks_per_mesh;
        match ctx
            .store()
            .webhook_create(hook, max)
            .await
            .map_err(unavailable)?
        {
            WebhookCreated::Created => Ok(Created {
                name: name.to_string(),
                url: hook_url(&base_url(ctx), &p.mesh.id, &secret),
                secret,
            }),
            WebhookCreated::Exists => Err(WebhookError::Exists {
                name: name.to_string(),
            }),
            WebhookCreated::TooMany => Err(WebhookError::TooMany { max }),
        }
    }
    .await;
    counted(ctx, result)
}

/// `list_webhooks`: the mesh's webhooks, URLs masked.
pub async fn list(ctx: &ServiceCtx, p: &Principal) -> Result<Vec<WebhookListing>, WebhookError> {
    let limit = match ctx.config().max_webhooks_per_mesh {
        0 => usize::MAX,
        n => n,
    };
    let result = ctx
        .store()
        .webhook_list(&p.mesh.id, limit)
        .await
        .map_err(unavailable)
        .map(|hooks| {
            let base = base_url(ctx);
            hooks
                .iter()
                .map(|h| WebhookListing {
                    name: h.name.clone(),
                    url: hook_url(&base, &h.mesh_id, "****"),
                    active: true,
                    created_at: ids::iso8601_ms(h.created_at),
                })
                .collect()
        });
    counted(ctx, result)
}

/// `delete_webhook`: by its creator or an admin; an unknown name is not an error.
pub async fn delete(ctx: &ServiceCtx, p: &Principal, name: &str) -> Result<(), WebhookError> {
    let result = async {
        let name = name.trim();
        let Some(hook) = ctx
            .store()
            .webhook_get(&p.mesh.id, name)
            .await
            .map_err(unavailable)?
        else {
            return Ok(());
        };
        if hook.creator_member_id != p.member.id {
            let me = ctx
                .store()
                .member(&p.mesh.id, &p.member.id)
                .await
                .map_err(unavailable)?;
            let admin = me.is_some_and(|m| {
                m.revoked_at.is_none()
                    && (m.role == Role::Admin
                        || (p.mesh.owner_user_id.is_some() && m.user_id == p.mesh.owner_user_id))
            });
            if !admin {
                return Err(WebhookError::Forbidden);
            }
        }
        ctx.store()
            .webhook_delete(&p.mesh.id, name)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
    .await;
    counted(ctx, result)
}

/// Why an inbound call was refused (the route maps each to its status and body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundError {
    /// No webhook of that mesh has that secret (401 `unauthorized`).
    Unauthorized,
    /// The JSON is not an object or an array (400 `invalid JSON body`).
    NotObject,
    /// The webhook's rate is spent (429).
    RateLimited,
    /// A backend failed (503).
    Unavailable(String),
}

impl InboundError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            InboundError::Unauthorized => "unauthorized",
            InboundError::NotObject => "not_object",
            InboundError::RateLimited => "rate_limit",
            InboundError::Unavailable(_) => "store",
        }
    }
}

/// The rate-limit bucket of a webhook (its id, fixed length).
fn rate_bucket(hook: &Webhook) -> String {
    format!("webhook:{}", hook.id)
}

/// An inbound call with a parsed JSON `body`: authenticates it by `secret`, applies the
/// webhook's rate, and pushes it to every live presence of the mesh, cluster-wide. The
/// number of presences it was published to.
pub async fn deliver(
    ctx: &ServiceCtx,
    mesh_id: &str,
    secret: &str,
    body: Value,
) -> Result<usize, InboundError> {
    let result = async {
        // A malformed secret is looked up like any other (its hash matches nothing).
        let presented = secret_hash(secret);
        let hook = ctx
            .store()
            .webhook_by_secret(mesh_id, &presented)
            .await
            .map_err(|e| InboundError::Unavailable(e.to_string()))?
            .filter(|h| same(h.secret_hash.as_bytes(), presented.as_bytes()))
            .ok_or(InboundError::Unauthorized)?;
        if !(body.is_object() || body.is_array()) {
            return Err(InboundError::NotObject);
        }
        let rate = ctx.config().webhook_rate_per_min;
        if rate > 0 {
            let allowed = ctx
                .presence()
                .take_send_token(&rate_bucket(&hook), rate, rate)
                .await
                .map_err(|e| InboundError::Unavailable(e.to_string()))?;
            if !allowed {
                return Err(InboundError::RateLimited);
            }
        }
        let live: Vec<String> = ctx
            .presence()
            .list(mesh_id)
            .await
            .map_err(|e| InboundError::Unavailable(e.to_string()))?
            .into_iter()
            .filter(|r| r.grace_until.is_none())
            .map(|r| r.presence_id)
            .collect();
        let delivered = live.len();
        if delivered > 0 {
            let raw = body.to_string();
            let push = WebhookPush {
                kind: "push".into(),
                subtype: "webhook".into(),
                event: hook.name.clone(),
                sender_pubkey: format!("webhook:{}", hook.name),
                priority: "next".into(),
                nonce: String::new(),
                ciphertext: STANDARD.encode(raw.as_bytes()),
                event_data: body,
                message_id: uuid_v4(),
                mesh_id: mesh_id.to_string(),
                created_at: ids::iso8601_ms(ids::now_ms()),
            };
            let event = MeshEvent::Deliver {
                presence_ids: live.into(),
                priority: None,
                frame: crate::protocol::encode(&push),
                trace: None,
            };
            ctx.publish(mesh_id, event)
                .await
                .map_err(|e| InboundError::Unavailable(e.to_string()))?;
        }
        ctx.metrics().webhook_deliveries.inc();
        Ok(delivered)
    }
    .await;
    if let Err(e) = &result {
        ctx.metrics().refuse_webhook(e.metric_label());
    }
    result
}

/// A random UUID in the v4 form (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`).
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    rand::fill(&mut b[..]);
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
    fn uuids_have_the_v4_form_and_hashes_compare_exactly() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert_eq!(secret_hash("x").len(), 64);
        assert_eq!(hook_url("https://b", "m", "s"), "https://b/hook/m/s");
    }
}
