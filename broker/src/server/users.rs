//! The operator API's users (`/api/v1/users…`, behind the admin token, routed from
//! `admin.rs`): create (the first admin is created this way, with the admin token), list,
//! show, disable or rename, reset a password (which also unlocks the account and ends its
//! web sessions).

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{BodyError, HttpResponse, json_response, read_json};
use crate::accounts::password;
use crate::ids::iso8601_ms;
use crate::node::Node;
use crate::store::StoreError;
use crate::store::accounts::{NewUser, User, UserPatch};

type ApiResult = Result<HttpResponse, (StatusCode, String)>;

/// Most users one list returns.
const LIST_LIMIT: usize = 1000;

fn bad(msg: impl Into<String>) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, msg.into())
}

fn store_error(e: StoreError) -> (StatusCode, String) {
    match e {
        StoreError::NotFound => (StatusCode::NOT_FOUND, "no such user".into()),
        StoreError::Conflict(m) => (StatusCode::CONFLICT, m),
        StoreError::Invalid(m) => (StatusCode::BAD_REQUEST, m),
        StoreError::Unavailable(m) | StoreError::OutcomeUnknown(m) => {
            (StatusCode::SERVICE_UNAVAILABLE, m)
        }
    }
}

fn user_json(u: &User) -> Value {
    json!({
        "id": u.id, "email": u.email, "displayName": u.display_name, "admin": u.is_admin,
        "disabled": u.disabled, "hasPassword": u.password_hash.is_some(),
        "lockedUntil": u.locked_until.filter(|t| *t > crate::ids::now_ms()).map(iso8601_ms),
        "createdAt": iso8601_ms(u.created_at),
    })
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

fn check_email(email: &str) -> Result<(), (StatusCode, String)> {
    let ok = email.len() <= 320
        && email
            .split_once('@')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(bad("email must look like name@host (at most 320 bytes)"))
    }
}

fn check_name(name: &str) -> Result<(), (StatusCode, String)> {
    if name.trim().is_empty() || name.chars().count() > 128 {
        return Err(bad("displayName must hold 1 to 128 characters"));
    }
    Ok(())
}

fn hash_password(pw: &str) -> Result<String, (StatusCode, String)> {
    if pw.chars().count() < password::MIN_PASSWORD_CHARS || pw.len() > password::MAX_PASSWORD_BYTES
    {
        return Err(bad(format!(
            "password must hold at least {} characters and at most {} bytes",
            password::MIN_PASSWORD_CHARS,
            password::MAX_PASSWORD_BYTES
        )));
    }
    password::hash(pw).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateUser {
    email: String,
    display_name: Option<String>,
    password: Option<String>,
    admin: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PatchUser {
    email: Option<String>,
    display_name: Option<String>,
    disabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetPassword {
    password: String,
}

/// `/api/v1/users…`; the caller has checked the admin token.
pub async fn dispatch(node: &Node, req: Request<Incoming>) -> ApiResult {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').skip(3).collect();
    let method = req.method().clone();
    match (method, segments.as_slice()) {
        (Method::POST, ["users"]) => {
            let b: CreateUser = body(node, req).await?;
            let email = b.email.trim().to_string();
            check_email(&email)?;
            let name = b.display_name.unwrap_or_else(|| email.clone());
            check_name(&name)?;
            let password_hash = b.password.as_deref().map(hash_password).transpose()?;
            let user = node
                .store
                .create_user(NewUser {
                    id: None,
                    email,
                    display_name: name.trim().to_string(),
                    password_hash,
                    is_admin: b.admin.unwrap_or(false),
                })
                .await
                .map_err(store_error)?;
            Ok(json_response(StatusCode::CREATED, &user_json(&user)))
        }
        (Method::GET, ["users"]) => {
            let users = node.store.users(LIST_LIMIT).await.map_err(store_error)?;
            Ok(json_response(
                StatusCode::OK,
                &json!({"users": users.iter().map(user_json).collect::<Vec<_>>()}),
            ))
        }
        (Method::GET, ["users", id]) => {
            let user = node
                .store
                .user(id)
                .await
                .map_err(store_error)?
                .ok_or((StatusCode::NOT_FOUND, "no such user".to_string()))?;
            Ok(json_response(StatusCode::OK, &user_json(&user)))
        }
        (Method::PATCH, ["users", id]) => {
            let b: PatchUser = body(node, req).await?;
            if let Some(e) = &b.email {
                check_email(e.trim())?;
            }
            if let Some(n) = &b.display_name {
                check_name(n)?;
            }
            let disabling = b.disabled == Some(true);
            let user = node
                .store
                .update_user(
                    id,
                    UserPatch {
                        display_name: b.display_name.map(|n| n.trim().to_string()),
                        email: b.email.map(|e| e.trim().to_string()),
                        disabled: b.disabled,
                        ..UserPatch::default()
                    },
                )
                .await
                .map_err(store_error)?;
            if disabling {
                node.store
                    .delete_web_sessions_of(&user.id)
                    .await
                    .map_err(store_error)?;
            }
            Ok(json_response(StatusCode::OK, &user_json(&user)))
        }
        (Method::POST, ["users", id, "password"]) => {
            let b: ResetPassword = body(node, req).await?;
            let hash = hash_password(&b.password)?;
            let user = node
                .store
                .update_user(
                    id,
                    UserPatch {
                        password_hash: Some(hash),
                        unlock: true,
                        ..UserPatch::default()
                    },
                )
                .await
                .map_err(store_error)?;
            node.store
                .delete_web_sessions_of(&user.id)
                .await
                .map_err(store_error)?;
            Ok(json_response(StatusCode::OK, &user_json(&user)))
        }
        _ => Err((StatusCode::NOT_FOUND, "no such route".into())),
    }
}
