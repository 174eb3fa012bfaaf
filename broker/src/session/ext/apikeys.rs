//! The WebSocket adapter of API keys (extensions §10): `apikey_create`, `apikey_list`,
//! `apikey_revoke`.
//!
//! Every reply and error echoes `_reqId` (**Ours:** the reference puts it into `id` for
//! `apikey_create` errors).

use crate::protocol;
use crate::protocol::ext::apikeys::{
    ApiKeyCreated, ApiKeyFrame, ApiKeyListResponse, ApiKeyRevokeResponse,
};
use crate::service::apikeys::{self, CreateKey};
use crate::session::Session;
use crate::store::apikeys::RevokeOutcome;

/// Handles one frame whose `type` is in [`crate::protocol::ext::apikeys::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let frame: ApiKeyFrame = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &format!("invalid {kind}: {e}"), req_id),
    };
    let (svc, p) = (&s.svc, &s.attached.principal);
    let req_id_owned = req_id.map(str::to_string);
    match frame {
        ApiKeyFrame::ApikeyCreate {
            label,
            capabilities,
            topic_scopes,
            expires_at,
        } => {
            let req = CreateKey {
                label,
                capabilities,
                topic_scopes,
                expires_at,
            };
            match apikeys::create(svc, p, req).await {
                Ok(minted) => s.reply(protocol::encode(&ApiKeyCreated {
                    id: minted.key.id.clone(),
                    secret: minted.secret,
                    label: minted.key.label.clone(),
                    prefix: minted.key.prefix.clone(),
                    capabilities: minted.key.capabilities.clone(),
                    topic_scopes: minted.key.topic_scopes.clone(),
                    created_at: crate::ids::iso8601_ms(minted.key.created_at),
                    req_id: req_id_owned,
                })),
                Err(e) => s.reply_error(e.code(), &e.message(), req_id),
            }
        }
        ApiKeyFrame::ApikeyList {} => match apikeys::list(svc, p).await {
            Ok(keys) => {
                let frame = protocol::encode(&ApiKeyListResponse {
                    keys: keys.iter().map(apikeys::listing).collect(),
                    req_id: req_id_owned,
                });
                super::state::reply_bounded(s, frame, "apikey_list_response", req_id);
            }
            Err(e) => s.reply_error(e.code(), &e.message(), req_id),
        },
        ApiKeyFrame::ApikeyRevoke { id } => match apikeys::revoke(svc, p, &id).await {
            Ok(outcome) => {
                let reply = match outcome {
                    RevokeOutcome::Revoked(id) => ApiKeyRevokeResponse {
                        status: "revoked".into(),
                        id: Some(id),
                        matches: None,
                        req_id: req_id_owned,
                    },
                    RevokeOutcome::NotFound => ApiKeyRevokeResponse {
                        status: "not_found".into(),
                        id: None,
                        matches: None,
                        req_id: req_id_owned,
                    },
                    RevokeOutcome::NotUnique(ids) => ApiKeyRevokeResponse {
                        status: "not_unique".into(),
                        id: None,
                        matches: Some(ids),
                        req_id: req_id_owned,
                    },
                };
                s.reply(protocol::encode(&reply));
            }
            Err(e) => s.reply_error(e.code(), &e.message(), req_id),
        },
    }
}
