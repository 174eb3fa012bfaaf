//! Request facts the account routes need: the client address (through trusted proxies
//! only), whether the request came over https, and the public URLs.

use std::net::{IpAddr, SocketAddr};

use hyper::HeaderMap;
use hyper::header::HOST;

use super::AccountsConfig;

/// `https://h` → `wss://h/ws`, `http://h` → `ws://h/ws`.
pub fn ws_url_of(http_base: &str) -> String {
    let base = http_base.trim_end_matches('/');
    if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}/ws")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}/ws")
    } else {
        format!("ws://{base}/ws")
    }
}

/// The socket's peer, as the accept loop recorded it.
pub fn peer(headers_ext: &hyper::http::Extensions) -> Option<IpAddr> {
    headers_ext
        .get::<SocketAddr>()
        .map(|a| a.ip().to_canonical())
}

fn trusted(cfg: &AccountsConfig, peer: Option<IpAddr>) -> bool {
    peer.is_some_and(|p| cfg.trusted_proxies.iter().any(|c| c.contains(p)))
}

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the
/// right-most `X-Forwarded-For` entry that is not a trusted proxy itself.
pub fn client_ip(
    cfg: &AccountsConfig,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Option<IpAddr> {
    if !trusted(cfg, peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !cfg.trusted_proxies.iter().any(|c| c.contains(*ip)))
        .or(peer)
}

/// Whether the original request was https: from a trusted proxy's `X-Forwarded-Proto` or
/// `Forwarded: proto=`, else from the configured public URL.
pub fn is_https(cfg: &AccountsConfig, headers: &HeaderMap, peer: Option<IpAddr>) -> bool {
    if let Some(url) = &cfg.public_url {
        return url.starts_with("https://");
    }
    forwarded_proto(cfg, headers, peer).is_some_and(|p| p == "https")
}

fn forwarded_proto(
    cfg: &AccountsConfig,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Option<String> {
    if !trusted(cfg, peer) {
        return None;
    }
    if let Some(p) = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        return p.split(',').next().map(|s| s.trim().to_ascii_lowercase());
    }
    let fwd = headers.get("forwarded").and_then(|v| v.to_str().ok())?;
    fwd.split([';', ','])
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("proto"))
        .map(|(_, v)| v.trim_matches('"').to_ascii_lowercase())
}

/// A `Host` header that is a plain host name or address with an optional port.
fn host_of(headers: &HeaderMap) -> Option<String> {
    let h = headers.get(HOST)?.to_str().ok()?;
    let ok = !h.is_empty()
        && h.len() <= 255
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    ok.then(|| h.to_string())
}

/// The public HTTP base: `BROKER_PUBLIC_URL`, else derived from `Host` and (from trusted
/// proxies only) the forwarded scheme.
pub fn public_http(
    cfg: &AccountsConfig,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    local: &str,
) -> String {
    if let Some(url) = &cfg.public_url {
        return url.clone();
    }
    let scheme = match forwarded_proto(cfg, headers, peer).as_deref() {
        Some("https") => "https",
        _ => "http",
    };
    format!(
        "{scheme}://{}",
        host_of(headers).unwrap_or_else(|| local.to_string())
    )
}

/// The public WebSocket URL (`…/ws`).
pub fn public_ws(
    cfg: &AccountsConfig,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    local: &str,
) -> String {
    if let Some(url) = &cfg.public_ws_url {
        return url.clone();
    }
    ws_url_of(&public_http(cfg, headers, peer, local))
}

/// Loopback, private (RFC 1918), link-local or unique-local: where the legacy shim is
/// accepted from.
pub fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ws_urls_follow_the_scheme() {
        assert_eq!(
            super::ws_url_of("https://m.example.com"),
            "wss://m.example.com/ws"
        );
        assert_eq!(
            super::ws_url_of("http://127.0.0.1:7900/"),
            "ws://127.0.0.1:7900/ws"
        );
    }
}
