//! The WebSocket adapter of the vault (extensions §16): `vault_set`, `vault_get`,
//! `vault_list`, `vault_delete`.
//!
//! Every reply echoes `_reqId` (the CLI matches these strictly): `vault_ack`,
//! `vault_get_result`, `vault_list_result`, or `error{code:"vault_error"}`.

use crate::protocol;
use crate::protocol::ext::vault::{VaultAck, VaultFrame, VaultGetResult, VaultListResult};
use crate::service::vault::{self, VaultError, VaultSet};
use crate::session::Session;

fn ack(key: String, action: &str, req_id: Option<&str>) -> bytes::Bytes {
    protocol::encode(&VaultAck {
        key,
        action: action.into(),
        req_id: req_id.map(str::to_string),
    })
}

/// Handles one frame whose `type` is in [`crate::protocol::ext::vault::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let frame: VaultFrame = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &format!("invalid {kind}: {e}"), req_id),
    };
    let (svc, p) = (&s.svc, &s.attached.principal);
    let refuse = |s: &Session, e: VaultError| s.reply_error(e.code(), &e.message(), req_id);
    match frame {
        VaultFrame::VaultSet {
            key,
            ciphertext,
            nonce,
            sealed_key,
            entry_type,
            mount_path,
            description,
        } => {
            let req = VaultSet {
                key: key.clone(),
                ciphertext,
                nonce,
                sealed_key,
                entry_type,
                mount_path,
                description,
            };
            match vault::set(svc, p, req).await {
                Ok(()) => s.reply(ack(key, "stored", req_id)),
                Err(e) => refuse(s, e),
            }
        }
        VaultFrame::VaultGet { keys } => match vault::get(svc, p, keys).await {
            Ok(entries) => {
                let frame = protocol::encode(&VaultGetResult {
                    entries: entries.iter().map(vault::secret).collect(),
                    req_id: req_id.map(str::to_string),
                });
                super::state::reply_bounded(s, frame, "vault_get_result", req_id);
            }
            Err(e) => refuse(s, e),
        },
        VaultFrame::VaultList {} => match vault::list(svc, p).await {
            Ok(entries) => {
                let frame = protocol::encode(&VaultListResult {
                    entries: entries.iter().map(vault::listing).collect(),
                    req_id: req_id.map(str::to_string),
                });
                super::state::reply_bounded(s, frame, "vault_list_result", req_id);
            }
            Err(e) => refuse(s, e),
        },
        VaultFrame::VaultDelete { key } => match vault::delete(svc, p, &key).await {
            Ok(deleted) => {
                let action = if deleted { "deleted" } else { "not_found" };
                s.reply(ack(key, action, req_id));
            }
            Err(e) => refuse(s, e),
        },
    }
}
