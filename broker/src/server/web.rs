//! The broker's own web UI for accounts: sign-in (`/login`, `/logout`), the device-code
//! approval page (`/cli-auth`, the CLI's `verification_url`), the paste-token page
//! (`/token`, its `token_url`) and the CLI session list with revoke (`/sessions`).
//!
//! Plain server-rendered HTML forms, no script. The session cookie (`cm_session`) is
//! HttpOnly, SameSite=Lax and Secure behind https; only its SHA-256 hash is stored. Every
//! state-changing form carries a CSRF token: the signed-in session's own token (checked
//! against the session row), or, for the sign-in form, a double-submit pre-session cookie
//! (`cm_pre`). Sign-in is rate limited per source address and per account, cluster-wide,
//! and an account locks after `LOGIN_LOCKOUT_FAILURES` failures in a row.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, COOKIE, HeaderValue, LOCATION, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};

use super::HttpResponse;
use super::cli::{Ctx, mint, percent_decode, rate_limit, session_json};
use crate::accounts::{self, net, password};
use crate::ids::{iso8601_ms, now_ms};
use crate::node::Node;
use crate::store::accounts::{Decision, User, UserPatch, WebSession};

const SESSION_COOKIE: &str = "cm_session";
const PRE_COOKIE: &str = "cm_pre";

/// Whether `path` is a page of the web UI.
pub fn serves(path: &str) -> bool {
    matches!(
        path,
        "/login" | "/logout" | "/cli-auth" | "/token" | "/sessions" | "/sessions/revoke"
    )
}

pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query or form value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn page(status: StatusCode, title: &str, body: &str) -> HttpResponse {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{t} · claudemesh broker</title><style>body{{font-family:system-ui,sans-serif;max-width:36em;margin:3em auto;padding:0 1em}}\
         input,button{{font-size:1em;padding:.4em;margin:.2em 0}}pre{{white-space:pre-wrap;word-break:break-all;background:#f4f4f4;padding:1em}}\
         .code{{font-size:2em;letter-spacing:.1em;font-family:monospace}}</style></head><body><h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    );
    let mut resp = Response::new(Full::new(Bytes::from(html)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn redirect(to: &str) -> HttpResponse {
    let mut resp = page(StatusCode::SEE_OTHER, "Redirecting", "");
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

fn set_cookie(resp: &mut HttpResponse, cookie: String) {
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(SET_COOKIE, v);
    }
}

fn cookie_attrs(node: &Node, ctx: &Ctx, max_age_s: i64) -> String {
    let secure = if net::is_https(&node.config.accounts, &ctx.headers, ctx.peer) {
        "; Secure"
    } else {
        ""
    };
    format!("; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_s}{secure}")
}

fn cookie(ctx: &Ctx, name: &str) -> Option<String> {
    ctx.headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

pub(super) fn eq_ct(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An `application/x-www-form-urlencoded` body of at most `MAX_MESSAGE_BYTES`.
async fn form(node: &Node, req: Request<Incoming>) -> Option<Vec<(String, String)>> {
    let bytes = Limited::new(req.into_body(), node.config.max_message_bytes)
        .collect()
        .await
        .ok()?
        .to_bytes();
    let text = std::str::from_utf8(&bytes).ok()?;
    Some(
        text.split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect(),
    )
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> &'a str {
    form.iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

fn query(ctx: &Ctx, name: &str) -> Option<String> {
    ctx.query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// A redirect target after sign-in: a local path only (no scheme, no `//host`).
fn safe_next(next: &str) -> String {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control)
        && next.len() <= 512;
    if ok {
        next.to_string()
    } else {
        "/sessions".into()
    }
}

/// The signed-in user of this request, with its session.
pub(super) async fn signed_in(node: &Node, ctx: &Ctx) -> Option<(User, WebSession)> {
    let raw = cookie(ctx, SESSION_COOKIE)?;
    let now = now_ms();
    let session = node
        .store
        .web_session(&accounts::sha256_hex(&raw), now)
        .await
        .ok()??;
    let user = node.store.user(&session.user_id).await.ok()??;
    if user.disabled {
        return None;
    }
    Some((user, session))
}

pub async fn handle(node: &Node, req: Request<Incoming>) -> HttpResponse {
    let ctx = Ctx::of(&req);
    match (&ctx.method, ctx.path.as_str()) {
        (&Method::GET, "/login") => login_page(node, &ctx, None, StatusCode::OK),
        (&Method::POST, "/login") => match form(node, req).await {
            Some(f) => login(node, &ctx, &f).await,
            None => bad_form(),
        },
        (&Method::POST, "/logout") => match form(node, req).await {
            Some(f) => logout(node, &ctx, &f).await,
            None => bad_form(),
        },
        (&Method::GET, "/cli-auth") => cli_auth_page(node, &ctx).await,
        (&Method::POST, "/cli-auth") => match form(node, req).await {
            Some(f) => cli_auth(node, &ctx, &f).await,
            None => bad_form(),
        },
        (&Method::GET, "/token") => token_page(node, &ctx).await,
        (&Method::POST, "/token") => match form(node, req).await {
            Some(f) => token(node, &ctx, &f).await,
            None => bad_form(),
        },
        (&Method::GET, "/sessions") => sessions_page(node, &ctx).await,
        (&Method::POST, "/sessions/revoke") => match form(node, req).await {
            Some(f) => revoke(node, &ctx, &f).await,
            None => bad_form(),
        },
        _ => page(StatusCode::METHOD_NOT_ALLOWED, "Not allowed", ""),
    }
}

fn bad_form() -> HttpResponse {
    page(
        StatusCode::BAD_REQUEST,
        "Bad request",
        "<p>The form could not be read.</p>",
    )
}

fn login_page(node: &Node, ctx: &Ctx, message: Option<&str>, status: StatusCode) -> HttpResponse {
    let pre = cookie(ctx, PRE_COOKIE).unwrap_or_else(accounts::random_secret);
    let next = safe_next(&query(ctx, "next").unwrap_or_default());
    let msg = message
        .map(|m| format!("<p role=\"alert\"><strong>{}</strong></p>", esc(m)))
        .unwrap_or_default();
    let body = format!(
        "{msg}<form method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{pre}\"><input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <p><label>Email<br><input name=\"email\" type=\"email\" autocomplete=\"username\" required></label></p>\
         <p><label>Password<br><input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label></p>\
         <p><button type=\"submit\">Sign in</button></p></form>",
        pre = esc(&pre),
        next = esc(&next)
    );
    let mut resp = page(status, "Sign in", &body);
    set_cookie(
        &mut resp,
        format!("{PRE_COOKIE}={pre}{}", cookie_attrs(node, ctx, 3600)),
    );
    resp
}

async fn login(node: &Node, ctx: &Ctx, f: &[(String, String)]) -> HttpResponse {
    let pre = cookie(ctx, PRE_COOKIE).unwrap_or_default();
    if pre.is_empty() || !eq_ct(&pre, field(f, "csrf")) {
        node.metrics.reject_account("csrf");
        return login_page(
            node,
            ctx,
            Some("The form expired; please sign in again."),
            StatusCode::FORBIDDEN,
        );
    }
    let cfg = &node.config.accounts;
    let email = field(f, "email").trim().to_ascii_lowercase();
    let pw = field(f, "password").to_string();
    let ip = ctx
        .client_ip(node)
        .map(|i| i.to_string())
        .unwrap_or_default();
    for bucket in [format!("login-ip:{ip}"), format!("login-user:{email}")] {
        if rate_limit(node, &bucket, cfg.login_rate_per_min, "login_rate")
            .await
            .is_err()
        {
            return login_page(
                node,
                ctx,
                Some("Too many sign-in attempts; wait a minute."),
                StatusCode::TOO_MANY_REQUESTS,
            );
        }
    }
    if email.len() > 320 || pw.len() > password::MAX_PASSWORD_BYTES {
        node.metrics.reject_account("login_failed");
        return login_page(
            node,
            ctx,
            Some("Wrong email or password."),
            StatusCode::UNAUTHORIZED,
        );
    }
    let user = match node.store.user_by_email(&email).await {
        Ok(u) => u,
        Err(_) => {
            return login_page(
                node,
                ctx,
                Some("Sign-in is unavailable; try again."),
                StatusCode::SERVICE_UNAVAILABLE,
            );
        }
    };
    let now = now_ms();
    if let Some(u) = &user
        && u.locked_until.is_some_and(|t| t > now)
    {
        node.metrics.reject_account("login_locked");
        return login_page(
            node,
            ctx,
            Some(
                "This account is locked after repeated failures; try again later or ask the operator.",
            ),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let phc = user
        .as_ref()
        .and_then(|u| u.password_hash.clone())
        .unwrap_or_else(|| password::decoy().to_string());
    // argon2id takes tens of milliseconds of CPU: off the async workers.
    let matches = tokio::task::spawn_blocking(move || password::verify(&pw, &phc))
        .await
        .unwrap_or(false);
    let user = match user {
        Some(u) if matches && !u.disabled && u.password_hash.is_some() => u,
        other => {
            node.metrics.reject_account("login_failed");
            if let Some(u) = other {
                let locked = node
                    .store
                    .record_login_failure(
                        &u.id,
                        now,
                        cfg.login_lockout_failures,
                        cfg.login_lockout_ms,
                    )
                    .await
                    .ok()
                    .flatten();
                if locked.is_some() {
                    tracing::warn!(user_id = %u.id, "account locked after repeated sign-in failures");
                }
            }
            return login_page(
                node,
                ctx,
                Some("Wrong email or password."),
                StatusCode::UNAUTHORIZED,
            );
        }
    };
    if user.failed_logins > 0 || user.locked_until.is_some() {
        let _ = node
            .store
            .update_user(
                &user.id,
                UserPatch {
                    unlock: true,
                    ..UserPatch::default()
                },
            )
            .await;
    }
    let raw = accounts::random_secret();
    let session = WebSession {
        id_hash: accounts::sha256_hex(&raw),
        user_id: user.id.clone(),
        csrf: accounts::random_secret(),
        created_at: now,
        expires_at: now + cfg.web_session_ttl_ms,
    };
    if node.store.create_web_session(session).await.is_err() {
        return login_page(
            node,
            ctx,
            Some("Sign-in is unavailable; try again."),
            StatusCode::SERVICE_UNAVAILABLE,
        );
    }
    let mut resp = redirect(&safe_next(field(f, "next")));
    set_cookie(
        &mut resp,
        format!(
            "{SESSION_COOKIE}={raw}{}",
            cookie_attrs(node, ctx, cfg.web_session_ttl_ms / 1000)
        ),
    );
    set_cookie(
        &mut resp,
        format!("{PRE_COOKIE}={}", cookie_attrs(node, ctx, 0)),
    );
    resp
}

/// The signed-in session and a valid CSRF token, or the answer that stops the request.
async fn checked(
    node: &Node,
    ctx: &Ctx,
    f: &[(String, String)],
) -> Result<(User, WebSession), HttpResponse> {
    let Some((user, session)) = signed_in(node, ctx).await else {
        node.metrics.reject_account("no_session");
        return Err(page(
            StatusCode::UNAUTHORIZED,
            "Sign in first",
            "<p>You are not signed in. <a href=\"/login\">Sign in</a>.</p>",
        ));
    };
    if !eq_ct(&session.csrf, field(f, "csrf")) {
        node.metrics.reject_account("csrf");
        return Err(page(
            StatusCode::FORBIDDEN,
            "Refused",
            "<p>The form's security token does not match your session. Reload the page and try again.</p>",
        ));
    }
    Ok((user, session))
}

fn signed_in_as(user: &User, session: &WebSession) -> String {
    format!(
        "<p>Signed in as <strong>{}</strong> ({}). <form method=\"post\" action=\"/logout\" style=\"display:inline\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Sign out</button></form></p>",
        esc(&user.display_name),
        esc(&user.email),
        esc(&session.csrf)
    )
}

async fn logout(node: &Node, ctx: &Ctx, f: &[(String, String)]) -> HttpResponse {
    let (_, session) = match checked(node, ctx, f).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let _ = node.store.delete_web_session(&session.id_hash).await;
    let mut resp = redirect("/login");
    set_cookie(
        &mut resp,
        format!("{SESSION_COOKIE}={}", cookie_attrs(node, ctx, 0)),
    );
    resp
}

pub(super) fn to_login(ctx: &Ctx) -> HttpResponse {
    let here = if ctx.query.is_empty() {
        ctx.path.clone()
    } else {
        format!("{}?{}", ctx.path, ctx.query)
    };
    redirect(&format!("/login?next={}", enc(&here)))
}

/// Looking up or deciding codes is limited per user (`LOGIN_RATE_PER_MIN`, cluster-wide):
/// a signed-in user must not enumerate `user_code`s to see others' devices or to bind
/// their CLI to his own account.
async fn code_lookups_limited(node: &Node, user: &User) -> bool {
    rate_limit(
        node,
        &format!("cli-auth:{}", user.id),
        node.config.accounts.login_rate_per_min,
        "login_rate",
    )
    .await
    .is_err()
}

fn too_many_lookups() -> HttpResponse {
    page(
        StatusCode::TOO_MANY_REQUESTS,
        "Slow down",
        "<p>Too many codes tried; wait a minute.</p>",
    )
}

async fn cli_auth_page(node: &Node, ctx: &Ctx) -> HttpResponse {
    let Some((user, session)) = signed_in(node, ctx).await else {
        return to_login(ctx);
    };
    let code = query(ctx, "session")
        .or_else(|| query(ctx, "code"))
        .unwrap_or_default();
    let header = signed_in_as(&user, &session);
    if !code.is_empty() && code_lookups_limited(node, &user).await {
        return too_many_lookups();
    }
    let found = if code.is_empty() || code.len() > 64 {
        None
    } else {
        node.store
            .device_code_by_session_or_user_code(&code)
            .await
            .ok()
            .flatten()
            .filter(|d| {
                d.status == crate::store::accounts::DeviceStatus::Pending && d.expires_at > now_ms()
            })
    };
    let body = match found {
        Some(d) => format!(
            "{header}<p>A command line asks to sign in as you. Check that this code matches the one in your terminal:</p>\
             <p class=\"code\">{uc}</p><p>Device: {host} ({platform} {arch}), from {ip}. Expires {exp}.</p>\
             <form method=\"post\" action=\"/cli-auth\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"code\" value=\"{id}\">\
             <button type=\"submit\" name=\"action\" value=\"approve\">Approve</button> \
             <button type=\"submit\" name=\"action\" value=\"deny\">Deny</button></form>",
            uc = esc(&d.user_code),
            host = esc(d.hostname.as_deref().unwrap_or("unknown host")),
            platform = esc(d.platform.as_deref().unwrap_or("")),
            arch = esc(d.arch.as_deref().unwrap_or("")),
            ip = esc(d.client_ip.as_deref().unwrap_or("unknown address")),
            exp = esc(&iso8601_ms(d.expires_at)),
            csrf = esc(&session.csrf),
            id = esc(&d.id),
        ),
        None => format!(
            "{header}{note}<form method=\"get\" action=\"/cli-auth\"><p><label>Code shown by <code>claudemesh login</code><br>\
             <input name=\"code\" placeholder=\"XXXX-XXXX\" required></label></p><p><button type=\"submit\">Continue</button></p></form>",
            note = if code.is_empty() {
                String::new()
            } else {
                "<p role=\"alert\"><strong>No pending sign-in has this code (it may have expired).</strong></p>".into()
            }
        ),
    };
    page(StatusCode::OK, "Approve a command-line sign-in", &body)
}

async fn cli_auth(node: &Node, ctx: &Ctx, f: &[(String, String)]) -> HttpResponse {
    let (user, _) = match checked(node, ctx, f).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if code_lookups_limited(node, &user).await {
        return too_many_lookups();
    }
    let code = field(f, "code").trim();
    let approve = match field(f, "action") {
        "approve" => true,
        "deny" => false,
        _ => return bad_form(),
    };
    match node
        .store
        .decide_device_code(code, &user.id, approve, now_ms())
        .await
    {
        Ok(Decision::Done) if approve => page(
            StatusCode::OK,
            "Approved",
            "<p>The command line is signed in. You can close this page and return to your terminal.</p>",
        ),
        Ok(Decision::Done) => page(StatusCode::OK, "Denied", "<p>The sign-in was refused.</p>"),
        Ok(Decision::NotFound) => page(
            StatusCode::NOT_FOUND,
            "Code not found",
            "<p>No pending sign-in has this code. Run <code>claudemesh login</code> again.</p>",
        ),
        Ok(Decision::Expired) => page(
            StatusCode::GONE,
            "Code expired",
            "<p>This sign-in expired. Run <code>claudemesh login</code> again.</p>",
        ),
        Err(_) => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "<p>Try again.</p>",
        ),
    }
}

async fn token_page(node: &Node, ctx: &Ctx) -> HttpResponse {
    let Some((user, session)) = signed_in(node, ctx).await else {
        return to_login(ctx);
    };
    let body = format!(
        "{}<p>Create a session token to paste into <code>claudemesh login</code> on a machine without a browser.</p>\
         <form method=\"post\" action=\"/token\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <p><label>Machine name<br><input name=\"hostname\" maxlength=\"128\" placeholder=\"paste-token\"></label></p>\
         <p><button type=\"submit\">Create token</button></p></form>",
        signed_in_as(&user, &session),
        esc(&session.csrf)
    );
    page(StatusCode::OK, "Session token", &body)
}

async fn token(node: &Node, ctx: &Ctx, f: &[(String, String)]) -> HttpResponse {
    let (user, session) = match checked(node, ctx, f).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let host: String = field(f, "hostname").trim().chars().take(128).collect();
    let hostname = Some(if host.is_empty() {
        "paste-token".to_string()
    } else {
        host
    });
    let (raw, cli) = mint(node, &user, "cli-token", (&hostname, &None, &None), None);
    if node
        .store
        .insert_cli_session(cli, node.config.accounts.max_cli_sessions_per_user)
        .await
        .is_err()
    {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "<p>Try again.</p>",
        );
    }
    let body = format!(
        "{}<p>Paste this token into the waiting <code>claudemesh login</code>. It is shown once; it can be revoked on the \
         <a href=\"/sessions\">sessions</a> page.</p><pre>{}</pre>",
        signed_in_as(&user, &session),
        esc(&raw)
    );
    page(StatusCode::OK, "Session token", &body)
}

async fn sessions_page(node: &Node, ctx: &Ctx) -> HttpResponse {
    let Some((user, session)) = signed_in(node, ctx).await else {
        return to_login(ctx);
    };
    let list = node
        .store
        .cli_sessions(&user.id, now_ms())
        .await
        .unwrap_or_default();
    let mut rows = String::new();
    for s in &list {
        let j = session_json(s);
        rows.push_str(&format!(
            "<li>{host} {platform} · created {created} · last seen {seen} \
             <form method=\"post\" action=\"/sessions/revoke\" style=\"display:inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"id\" value=\"{id}\">\
             <button type=\"submit\">Revoke</button></form></li>",
            host = esc(j["hostname"].as_str().unwrap_or("unknown")),
            platform = esc(j["platform"].as_str().unwrap_or("")),
            created = esc(j["created_at"].as_str().unwrap_or("")),
            seen = esc(j["last_seen_at"].as_str().unwrap_or("never")),
            csrf = esc(&session.csrf),
            id = esc(&s.id),
        ));
    }
    if rows.is_empty() {
        rows.push_str("<li>No command-line sessions.</li>");
    }
    let body = format!(
        "{}<p><a href=\"/cli-auth\">Approve a sign-in</a> · <a href=\"/token\">Create a token</a></p><ul>{rows}</ul>",
        signed_in_as(&user, &session)
    );
    page(StatusCode::OK, "Command-line sessions", &body)
}

async fn revoke(node: &Node, ctx: &Ctx, f: &[(String, String)]) -> HttpResponse {
    let (user, _) = match checked(node, ctx, f).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match node
        .store
        .revoke_cli_session(&user.id, field(f, "id"), now_ms())
        .await
    {
        Ok(_) => redirect("/sessions"),
        Err(_) => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "<p>Try again.</p>",
        ),
    }
}
