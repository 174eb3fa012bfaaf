//! Accounts of this broker (issue #12, `cli-routes.md`): the settings of the logged-in CLI
//! flows and the web UI, session tokens, password hashing and the request facts (client
//! address, public URLs) the routes in `server/cli.rs`, `server/web.rs` and
//! `server/users.rs` share. Durable state is the store's (`store/accounts.rs`); limits
//! shared across replicas go through [`Presence::take_send_token`](crate::cluster::presence::Presence::take_send_token).

pub mod net;
pub mod password;
pub mod token;

use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::config::{ConfigError, SETTINGS, Source};

/// The alphabet of device codes, user codes, session ids and invite codes (no 0/O/1/I).
pub const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A random string of `len` characters of [`CODE_ALPHABET`] (unbiased: 32 divides 256).
pub fn random_code(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rand::fill(&mut bytes[..]);
    bytes
        .iter()
        .map(|b| CODE_ALPHABET[(*b as usize) % CODE_ALPHABET.len()] as char)
        .collect()
}

/// 32 random bytes as base64url without padding: cookies and CSRF tokens.
pub fn random_secret() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::ids::random_seed())
}

/// SHA-256 of `text`, lowercase hex (token and cookie hashes).
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A trusted proxy: one address or a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// Where the HS256 secret of session tokens came from (for the start-up log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    Configured,
    /// Derived from `BROKER_ADMIN_TOKEN`: every replica with the same token agrees.
    AdminToken,
    /// Drawn at start: tokens die with the process and no other replica accepts them.
    Random,
}

/// The settings of accounts and the logged-in CLI routes.
#[derive(Clone)]
pub struct AccountsConfig {
    /// The HS256 key of CLI session tokens.
    pub session_secret: Vec<u8>,
    pub secret_source: SecretSource,
    /// The public HTTP base (`https://mesh.example.com`), no trailing slash.
    pub public_url: Option<String>,
    /// The public WebSocket URL (`wss://mesh.example.com/ws`).
    pub public_ws_url: Option<String>,
    pub trusted_proxies: Vec<Cidr>,
    pub legacy_auth: bool,
    pub cli_session_ttl_ms: i64,
    pub device_code_ttl_ms: i64,
    pub web_session_ttl_ms: i64,
    pub invite_ttl_ms: i64,
    pub invite_max_uses: u32,
    pub login_rate_per_min: u32,
    pub login_lockout_failures: u32,
    pub login_lockout_ms: i64,
    pub device_code_rate_per_min: u32,
    pub max_pending_device_codes: u64,
    pub max_cli_sessions_per_user: usize,
}

impl std::fmt::Debug for AccountsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountsConfig")
            .field("secret_source", &self.secret_source)
            .field("public_url", &self.public_url)
            .field("public_ws_url", &self.public_ws_url)
            .field("legacy_auth", &self.legacy_auth)
            .finish_non_exhaustive()
    }
}

fn setting(name: &'static str) -> &'static crate::config::Setting {
    SETTINGS
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("setting {name} is not declared in SETTINGS"))
}

struct Read<'a>(&'a dyn Source);

impl Read<'_> {
    fn optional(&self, name: &'static str) -> Option<String> {
        let _ = setting(name);
        self.0.get(name).filter(|v| !v.is_empty())
    }

    fn value(&self, name: &'static str) -> String {
        self.optional(name)
            .unwrap_or_else(|| setting(name).default.to_string())
    }

    fn invalid(name: &'static str, value: &str, why: impl ToString) -> ConfigError {
        ConfigError::Invalid {
            name,
            value: value.to_string(),
            why: why.to_string(),
        }
    }

    fn number<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display>(
        &self,
        name: &'static str,
        min: T,
    ) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        let v = self.value(name);
        let n: T = v
            .trim()
            .parse()
            .map_err(|e: T::Err| Self::invalid(name, &v, e))?;
        if n < min {
            return Err(Self::invalid(name, &v, format!("must be at least {min}")));
        }
        Ok(n)
    }

    fn millis(&self, name: &'static str) -> Result<i64, ConfigError> {
        let ms: i64 = self.number(name, 1)?;
        if ms > 365 * 24 * 3_600_000 {
            return Err(Self::invalid(
                name,
                &ms.to_string(),
                "must be at most 31536000000 (365 days)",
            ));
        }
        Ok(ms)
    }

    fn url(&self, name: &'static str, schemes: &[&str]) -> Result<Option<String>, ConfigError> {
        let Some(v) = self.optional(name) else {
            return Ok(None);
        };
        let trimmed = v.trim().trim_end_matches('/').to_string();
        let ok = schemes.iter().any(|s| {
            trimmed
                .strip_prefix(s)
                .and_then(|r| r.strip_prefix("://"))
                .is_some_and(|rest| {
                    !rest.is_empty()
                        && rest
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-._:/[]%".contains(c))
                })
        });
        if !ok {
            return Err(Self::invalid(
                name,
                &v,
                format!("expected {}://HOST[:PORT][/PATH]", schemes.join("|")),
            ));
        }
        Ok(Some(trimmed))
    }
}

impl AccountsConfig {
    /// Reads the accounts settings (see `docs/env-vars.md`).
    pub fn from_source(src: &dyn Source) -> Result<AccountsConfig, ConfigError> {
        let r = Read(src);
        let (session_secret, secret_source) = match r.optional("BROKER_SESSION_SECRET") {
            Some(s) if s.len() < 32 => {
                return Err(Read::invalid(
                    "BROKER_SESSION_SECRET",
                    "(hidden)",
                    "must be at least 32 characters",
                ));
            }
            Some(s) => (s.into_bytes(), SecretSource::Configured),
            None => match src.get("BROKER_ADMIN_TOKEN").filter(|t| !t.is_empty()) {
                Some(admin) => (
                    token::derive_secret(admin.as_bytes()),
                    SecretSource::AdminToken,
                ),
                None => (crate::ids::random_seed().to_vec(), SecretSource::Random),
            },
        };
        let public_url = r.url("BROKER_PUBLIC_URL", &["http", "https"])?;
        let public_ws_url = match r.url("BROKER_PUBLIC_WS_URL", &["ws", "wss"])? {
            Some(u) => Some(u),
            None => public_url.as_deref().map(net::ws_url_of),
        };
        let mut trusted_proxies = Vec::new();
        let proxies = r.value("BROKER_TRUSTED_PROXIES");
        for part in proxies.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            trusted_proxies.push(Cidr::parse(part).ok_or_else(|| {
                Read::invalid(
                    "BROKER_TRUSTED_PROXIES",
                    &proxies,
                    format!("{part:?} is not an address or CIDR block"),
                )
            })?);
        }
        let legacy_auth = match r.value("BROKER_LEGACY_AUTH").as_str() {
            "0" => false,
            "1" => true,
            other => {
                return Err(Read::invalid(
                    "BROKER_LEGACY_AUTH",
                    other,
                    "expected 0 or 1",
                ));
            }
        };
        Ok(AccountsConfig {
            session_secret,
            secret_source,
            public_url,
            public_ws_url,
            trusted_proxies,
            legacy_auth,
            cli_session_ttl_ms: r.millis("CLI_SESSION_TTL_MS")?,
            device_code_ttl_ms: r.millis("DEVICE_CODE_TTL_MS")?,
            web_session_ttl_ms: r.millis("WEB_SESSION_TTL_MS")?,
            invite_ttl_ms: r.millis("CLI_INVITE_TTL_MS")?,
            invite_max_uses: r.number("CLI_INVITE_MAX_USES", 1)?,
            login_rate_per_min: r.number("LOGIN_RATE_PER_MIN", 0)?,
            login_lockout_failures: r.number("LOGIN_LOCKOUT_FAILURES", 0)?,
            login_lockout_ms: r.millis("LOGIN_LOCKOUT_MS")?,
            device_code_rate_per_min: r.number("DEVICE_CODE_RATE_PER_MIN", 0)?,
            max_pending_device_codes: r.number("MAX_PENDING_DEVICE_CODES", 1)?,
            max_cli_sessions_per_user: r.number("MAX_CLI_SESSIONS_PER_USER", 1)?,
        })
    }

    /// Logs what an operator must know at start-up: the legacy shim, a session secret
    /// that replicas may not share.
    pub fn log_startup(&self, cluster: bool) {
        if self.legacy_auth {
            tracing::warn!(
                "BROKER_LEGACY_AUTH=1: the legacy shim is ON. Any loopback or private-network \
                 client can act as ANY user by naming a user_id on GET /cli/meshes, POST /cli/mesh/create, \
                 /cli/mesh/<slug>/invite, /cli/mesh/<slug>/grants and DELETE /cli/mesh/<slug>. \
                 Turn it off once broker_legacy_auth_hits_total stays 0."
            );
        }
        match self.secret_source {
            SecretSource::Configured => {}
            SecretSource::AdminToken => tracing::warn!(
                "BROKER_SESSION_SECRET is unset: CLI session tokens are signed with a key derived from \
                 BROKER_ADMIN_TOKEN (rotating the admin token signs every CLI user out); set BROKER_SESSION_SECRET"
            ),
            SecretSource::Random if cluster => tracing::warn!(
                "BROKER_SESSION_SECRET and BROKER_ADMIN_TOKEN are unset: CLI session tokens are signed with a \
                 random key of this replica only; other replicas refuse them and a restart signs everyone out"
            ),
            SecretSource::Random => tracing::warn!(
                "dev mode: CLI session tokens are signed with a key generated at start; a restart signs everyone out"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_match_their_addresses_only() {
        let c = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(c.contains("10.1.200.3".parse().expect("ip")));
        assert!(!c.contains("10.2.0.1".parse().expect("ip")));
        let one = Cidr::parse("127.0.0.1").expect("ip");
        assert!(one.contains("127.0.0.1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.2".parse().expect("ip")));
        assert!(
            Cidr::parse("fd00::/8")
                .expect("v6")
                .contains("fd12::1".parse().expect("ip"))
        );
        assert!(Cidr::parse("1.2.3.4/33").is_none());
    }

    #[test]
    fn random_codes_use_the_alphabet() {
        let c = random_code(16);
        assert_eq!(c.len(), 16);
        assert!(c.bytes().all(|b| CODE_ALPHABET.contains(&b)));
    }
}
