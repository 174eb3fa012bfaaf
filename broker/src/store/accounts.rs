//! Accounts (issue #12, `cli-routes.md`): users of this broker, device codes, CLI sessions
//! (stored only as a SHA-256 hash of the token), web sessions, the `/cli-sync` `jti` set,
//! and the mesh operations of signed-in users (create with an owner member in one write,
//! list, find by slug among the caller's meshes, rename, archive).
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/accounts.rs`. Contract suite: `tests/store_contract.rs`.
//!
//! Dev mode only knows the meshes this family created (`create_owned_mesh`) or looked at
//! by id: a mesh made through the operator API with `ownerUserId` is listed for its owner
//! in PostgreSQL, not in memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::memory::MemoryStore;
use super::{Member, Mesh, MeshStore, NewMember, StoreError, StoreResult};
use crate::ids;

/// A user of this broker.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: String,
    pub email: String,
    pub display_name: String,
    /// The argon2id PHC string; `None`: the user cannot sign in to the web UI.
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub disabled: bool,
    /// Failed sign-ins since the last success or lockout.
    pub failed_logins: u32,
    /// While set and in the future, sign-in is refused.
    pub locked_until: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    /// `None`: a random id is drawn.
    pub id: Option<String>,
    pub email: String,
    pub display_name: String,
    pub password_hash: Option<String>,
    pub is_admin: bool,
}

/// A change to a user; `None` fields are left alone.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub password_hash: Option<String>,
    pub disabled: Option<bool>,
    /// Clears the failure count and the lockout.
    pub unlock: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    Pending,
    Approved,
    Denied,
    Consumed,
    Expired,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Approved => "approved",
            DeviceStatus::Denied => "denied",
            DeviceStatus::Consumed => "consumed",
            DeviceStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> DeviceStatus {
        match s {
            "pending" => DeviceStatus::Pending,
            "approved" => DeviceStatus::Approved,
            "denied" => DeviceStatus::Denied,
            "consumed" => DeviceStatus::Consumed,
            _ => DeviceStatus::Expired,
        }
    }
}

/// A device-code login (`POST /cli/device-code`). The session token is minted when the
/// approved code is consumed by a poll, so no token is ever stored in the clear.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceCode {
    /// `clm_sess_…`, the `session_id` of the CLI.
    pub id: String,
    pub device_code: String,
    pub user_code: String,
    pub status: DeviceStatus,
    pub hostname: Option<String>,
    pub platform: Option<String>,
    pub arch: Option<String>,
    pub client_ip: Option<String>,
    /// Set by the approval: the signed-in account the code is bound to.
    pub user_id: Option<String>,
    pub expires_at: i64,
    pub created_at: i64,
    pub approved_at: Option<i64>,
}

/// A CLI session: the token's SHA-256 hash and what it was issued for.
#[derive(Debug, Clone, PartialEq)]
pub struct CliSession {
    /// The token's `jti`.
    pub id: String,
    pub user_id: String,
    pub token_hash: String,
    pub device_code_id: Option<String>,
    pub hostname: Option<String>,
    pub platform: Option<String>,
    pub arch: Option<String>,
    pub created_at: i64,
    pub last_seen_at: Option<i64>,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

impl CliSession {
    pub fn is_live(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// A web UI session: the cookie's SHA-256 hash and its CSRF token.
#[derive(Debug, Clone, PartialEq)]
pub struct WebSession {
    pub id_hash: String,
    pub user_id: String,
    pub csrf: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// The outcome of an approval or denial of a device code.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Done,
    /// No pending entry with that `session_id` or `user_code`.
    NotFound,
    /// It was pending but past its expiry (now marked `expired`).
    Expired,
}

/// What a poll of a device code finds.
#[derive(Debug, Clone, PartialEq)]
pub enum Poll {
    /// Unknown, or expired (marked so now if it was pending or approved).
    Expired,
    Pending,
    Consumed,
    Denied,
    /// Approved and not consumed yet: the caller mints a token and calls
    /// [`AccountStore::consume_device_code`].
    Approved(Box<DeviceCode>),
}

/// A mesh as a signed-in user sees it.
#[derive(Debug, Clone)]
pub struct UserMesh {
    pub mesh: Mesh,
    /// The user's own non-revoked member row, if any.
    pub member: Option<Member>,
    pub is_owner: bool,
    /// Non-revoked members.
    pub member_count: u64,
}

/// Accounts, sessions and the mesh operations of signed-in users. See the module docs.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// [`StoreError::Conflict`] when the email (case-insensitive) or id is taken.
    async fn create_user(&self, user: NewUser) -> StoreResult<User>;
    async fn user(&self, id: &str) -> StoreResult<Option<User>>;
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>>;
    /// Users by creation, at most `limit`.
    async fn users(&self, limit: usize) -> StoreResult<Vec<User>>;
    /// [`StoreError::NotFound`] for an unknown id.
    async fn update_user(&self, id: &str, patch: UserPatch) -> StoreResult<User>;
    /// Counts a failed sign-in; at `max_failures` the account is locked until
    /// `now + lockout_ms` and the count starts again. Returns the lock's end, if locked.
    async fn record_login_failure(
        &self,
        id: &str,
        now: i64,
        max_failures: u32,
        lockout_ms: i64,
    ) -> StoreResult<Option<i64>>;

    /// Stores a new pending code. Refused ([`StoreError::Invalid`]) when `max_pending`
    /// unexpired pending codes exist. Forgets codes that expired more than an hour ago.
    async fn create_device_code(&self, code: DeviceCode, max_pending: u64) -> StoreResult<()>;
    /// The entry with this `session_id` or `user_code`, whatever its state.
    async fn device_code_by_session_or_user_code(
        &self,
        code: &str,
    ) -> StoreResult<Option<DeviceCode>>;
    /// Binds a pending, unexpired code (by `session_id` or `user_code`) to `user_id`
    /// (`approve`) or denies it. Atomic: only a pending code changes.
    async fn decide_device_code(
        &self,
        code: &str,
        user_id: &str,
        approve: bool,
        now: i64,
    ) -> StoreResult<Decision>;
    /// Looks at a code for a poll; marks a pending or approved code past its expiry
    /// `expired`.
    async fn poll_device_code(&self, device_code: &str, now: i64) -> StoreResult<Poll>;
    /// Atomically turns the approved, unexpired code into `consumed` and stores its
    /// session (revoking the user's oldest beyond `max_live`); `false` (nothing stored) when
    /// another poll consumed it first.
    async fn consume_device_code(
        &self,
        id: &str,
        session: CliSession,
        max_live: usize,
        now: i64,
    ) -> StoreResult<bool>;

    /// Stores a session; beyond `max_live` live sessions of its user the oldest are revoked.
    async fn insert_cli_session(&self, session: CliSession, max_live: usize) -> StoreResult<()>;
    async fn cli_session_by_hash(&self, token_hash: &str) -> StoreResult<Option<CliSession>>;
    async fn touch_cli_session(&self, id: &str, now: i64) -> StoreResult<()>;
    /// Revokes the live session with this hash; `false` when there was none.
    async fn revoke_cli_session_by_hash(&self, token_hash: &str, now: i64) -> StoreResult<bool>;
    /// Revokes one of the user's live sessions by id; `false` when there was none.
    async fn revoke_cli_session(&self, user_id: &str, id: &str, now: i64) -> StoreResult<bool>;
    /// The user's live sessions, newest first.
    async fn cli_sessions(&self, user_id: &str, now: i64) -> StoreResult<Vec<CliSession>>;

    /// Stores a web session; forgets expired ones.
    async fn create_web_session(&self, session: WebSession) -> StoreResult<()>;
    /// The unexpired session with this cookie hash.
    async fn web_session(&self, id_hash: &str, now: i64) -> StoreResult<Option<WebSession>>;
    async fn delete_web_session(&self, id_hash: &str) -> StoreResult<()>;
    /// Ends every web session of the user (password reset, disable).
    async fn delete_web_sessions_of(&self, user_id: &str) -> StoreResult<()>;

    /// Records a `/cli-sync` token id until `expires_at`; `false` when it was seen before.
    async fn use_sync_jti(&self, jti: &str, expires_at: i64, now: i64) -> StoreResult<bool>;

    /// Creates the mesh and its owner member in one write; [`StoreError::Conflict`] when a
    /// live (non-archived) mesh has the slug.
    async fn create_owned_mesh(&self, mesh: Mesh, owner: NewMember) -> StoreResult<Member>;
    /// Whether a live mesh has this slug.
    async fn slug_taken(&self, slug: &str) -> StoreResult<bool>;
    /// The live meshes where the user has a non-revoked member row or is the owner.
    async fn user_meshes(&self, user_id: &str) -> StoreResult<Vec<UserMesh>>;
    /// One of [`AccountStore::user_meshes`] by slug.
    async fn user_mesh_by_slug(&self, user_id: &str, slug: &str) -> StoreResult<Option<UserMesh>>;
    /// Sets slug and name; [`StoreError::Conflict`] when another live mesh has the slug.
    async fn rename_mesh(&self, mesh_id: &str, slug: &str) -> StoreResult<()>;
    /// Soft delete (`archived_at`).
    async fn archive_mesh(&self, mesh_id: &str, now: i64) -> StoreResult<()>;
    async fn mesh_archived(&self, mesh_id: &str) -> StoreResult<bool>;
    /// Sets the `user_id` of a member row (a `/cli-sync` link).
    async fn link_member(&self, mesh_id: &str, member_id: &str, user_id: &str) -> StoreResult<()>;
}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    users: BTreeMap<String, User>,
    device_codes: BTreeMap<String, DeviceCode>,
    cli_sessions: BTreeMap<String, CliSession>,
    /// Insertion order of the CLI sessions (session id → sequence): "the oldest" among
    /// sessions of one millisecond.
    cli_session_seq: HashMap<String, u64>,
    next_cli_session_seq: u64,
    web_sessions: HashMap<String, WebSession>,
    jtis: HashMap<String, i64>,
    /// Meshes this family knows (see the module docs), with their renamed slug and name.
    meshes: BTreeMap<String, Option<String>>,
    archived: BTreeSet<String>,
    /// Member links set by `link_member`: (mesh, member) → user.
    links: HashMap<(String, String), String>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets what this family knows of a deleted mesh (`MemoryStore::delete_mesh`): its
    /// slug, its archived mark and its member links, as the PostgreSQL delete removes the
    /// `meshes` row and, with the member rows, their `user_id`.
    pub(super) fn forget_mesh(&self, mesh_id: &str) {
        let mut a = self.lock();
        a.meshes.remove(mesh_id);
        a.archived.remove(mesh_id);
        a.links.retain(|(mesh, _), _| mesh != mesh_id);
    }

    /// Forgets a deleted member's link to its user (`MemoryStore::delete_member`).
    pub(super) fn forget_member(&self, mesh_id: &str, member_id: &str) {
        self.lock()
            .links
            .remove(&(mesh_id.to_string(), member_id.to_string()));
    }
}

fn expired_poll(dc: &mut DeviceCode, now: i64) -> bool {
    if matches!(dc.status, DeviceStatus::Pending | DeviceStatus::Approved) && dc.expires_at <= now {
        dc.status = DeviceStatus::Expired;
    }
    dc.status == DeviceStatus::Expired
}

fn revoke_beyond(inner: &mut Inner, user_id: &str, max_live: usize, now: i64) {
    let mut live: Vec<(i64, u64, String)> = inner
        .cli_sessions
        .values()
        .filter(|s| s.user_id == user_id && s.is_live(now))
        .map(|s| {
            let seq = inner.cli_session_seq.get(&s.id).copied().unwrap_or(0);
            (s.created_at, seq, s.id.clone())
        })
        .collect();
    if live.len() <= max_live {
        return;
    }
    live.sort();
    let extra = live.len() - max_live;
    for (_, _, id) in live.into_iter().take(extra) {
        if let Some(s) = inner.cli_sessions.get_mut(&id) {
            s.revoked_at = Some(now);
        }
    }
}

impl MemoryStore {
    fn accounts(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.accounts.lock()
    }

    async fn memory_user_mesh(
        &self,
        user_id: &str,
        mesh_id: &str,
    ) -> StoreResult<Option<UserMesh>> {
        let (renamed, archived) = {
            let a = self.accounts();
            (
                a.meshes.get(mesh_id).cloned().flatten(),
                a.archived.contains(mesh_id),
            )
        };
        if archived {
            return Ok(None);
        }
        let Some(mut mesh) = MeshStore::mesh(self, mesh_id).await? else {
            return Ok(None);
        };
        if let Some(slug) = renamed {
            mesh.name = slug.clone();
            mesh.slug = slug;
        }
        let mut members = self.members(mesh_id).await?;
        {
            let a = self.accounts();
            for m in &mut members {
                if let Some(u) = a.links.get(&(mesh_id.to_string(), m.id.clone())) {
                    m.user_id = Some(u.clone());
                }
            }
        }
        let live: Vec<Member> = members
            .into_iter()
            .filter(|m| m.revoked_at.is_none())
            .collect();
        let member = live
            .iter()
            .find(|m| m.user_id.as_deref() == Some(user_id))
            .cloned();
        let is_owner = mesh.owner_user_id.as_deref() == Some(user_id);
        if member.is_none() && !is_owner {
            return Ok(None);
        }
        Ok(Some(UserMesh {
            mesh,
            member,
            is_owner,
            member_count: live.len() as u64,
        }))
    }
}

#[async_trait]
impl AccountStore for MemoryStore {
    async fn create_user(&self, u: NewUser) -> StoreResult<User> {
        let mut a = self.accounts();
        let id = u.id.unwrap_or_else(|| ids::random_id(24));
        if a.users.contains_key(&id)
            || a.users
                .values()
                .any(|x| x.email.eq_ignore_ascii_case(&u.email))
        {
            return Err(StoreError::Conflict("a user with this email exists".into()));
        }
        let user = User {
            id: id.clone(),
            email: u.email,
            display_name: u.display_name,
            password_hash: u.password_hash,
            is_admin: u.is_admin,
            disabled: false,
            failed_logins: 0,
            locked_until: None,
            created_at: ids::now_ms(),
        };
        a.users.insert(id, user.clone());
        Ok(user)
    }

    async fn user(&self, id: &str) -> StoreResult<Option<User>> {
        Ok(self.accounts().users.get(id).cloned())
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        Ok(self
            .accounts()
            .users
            .values()
            .find(|u| u.email.eq_ignore_ascii_case(email))
            .cloned())
    }

    async fn users(&self, limit: usize) -> StoreResult<Vec<User>> {
        let mut all: Vec<User> = self.accounts().users.values().cloned().collect();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        all.truncate(limit);
        Ok(all)
    }

    async fn update_user(&self, id: &str, p: UserPatch) -> StoreResult<User> {
        let mut a = self.accounts();
        if let Some(email) = &p.email
            && a.users
                .values()
                .any(|x| x.id != id && x.email.eq_ignore_ascii_case(email))
        {
            return Err(StoreError::Conflict("a user with this email exists".into()));
        }
        let u = a.users.get_mut(id).ok_or(StoreError::NotFound)?;
        if let Some(v) = p.display_name {
            u.display_name = v;
        }
        if let Some(v) = p.email {
            u.email = v;
        }
        if let Some(v) = p.password_hash {
            u.password_hash = Some(v);
        }
        if let Some(v) = p.disabled {
            u.disabled = v;
        }
        if p.unlock {
            u.failed_logins = 0;
            u.locked_until = None;
        }
        Ok(u.clone())
    }

    async fn record_login_failure(
        &self,
        id: &str,
        now: i64,
        max_failures: u32,
        lockout_ms: i64,
    ) -> StoreResult<Option<i64>> {
        let mut a = self.accounts();
        let u = a.users.get_mut(id).ok_or(StoreError::NotFound)?;
        u.failed_logins += 1;
        if max_failures > 0 && u.failed_logins >= max_failures {
            u.failed_logins = 0;
            u.locked_until = Some(now + lockout_ms);
        }
        Ok(u.locked_until.filter(|t| *t > now))
    }

    async fn create_device_code(&self, code: DeviceCode, max_pending: u64) -> StoreResult<()> {
        let mut a = self.accounts();
        let now = code.created_at;
        a.device_codes.retain(|_, d| d.expires_at > now - 3_600_000);
        let pending = a
            .device_codes
            .values()
            .filter(|d| d.status == DeviceStatus::Pending && d.expires_at > now)
            .count() as u64;
        if pending >= max_pending {
            return Err(StoreError::Invalid("too many pending device codes".into()));
        }
        if a.device_codes.values().any(|d| {
            d.id == code.id || d.device_code == code.device_code || d.user_code == code.user_code
        }) {
            return Err(StoreError::Conflict("device code exists".into()));
        }
        a.device_codes.insert(code.id.clone(), code);
        Ok(())
    }

    async fn device_code_by_session_or_user_code(
        &self,
        code: &str,
    ) -> StoreResult<Option<DeviceCode>> {
        Ok(self
            .accounts()
            .device_codes
            .values()
            .find(|d| d.id == code || d.user_code == code)
            .cloned())
    }

    async fn decide_device_code(
        &self,
        code: &str,
        user_id: &str,
        approve: bool,
        now: i64,
    ) -> StoreResult<Decision> {
        let mut a = self.accounts();
        let Some(dc) = a
            .device_codes
            .values_mut()
            .find(|d| (d.id == code || d.user_code == code) && d.status == DeviceStatus::Pending)
        else {
            return Ok(Decision::NotFound);
        };
        if dc.expires_at <= now {
            dc.status = DeviceStatus::Expired;
            return Ok(Decision::Expired);
        }
        if approve {
            dc.status = DeviceStatus::Approved;
            dc.user_id = Some(user_id.to_string());
            dc.approved_at = Some(now);
        } else {
            dc.status = DeviceStatus::Denied;
        }
        Ok(Decision::Done)
    }

    async fn poll_device_code(&self, device_code: &str, now: i64) -> StoreResult<Poll> {
        let mut a = self.accounts();
        let Some(dc) = a
            .device_codes
            .values_mut()
            .find(|d| d.device_code == device_code)
        else {
            return Ok(Poll::Expired);
        };
        if expired_poll(dc, now) {
            return Ok(Poll::Expired);
        }
        Ok(match dc.status {
            DeviceStatus::Pending => Poll::Pending,
            DeviceStatus::Approved => Poll::Approved(Box::new(dc.clone())),
            DeviceStatus::Denied => Poll::Denied,
            DeviceStatus::Consumed => Poll::Consumed,
            DeviceStatus::Expired => Poll::Expired,
        })
    }

    async fn consume_device_code(
        &self,
        id: &str,
        session: CliSession,
        max_live: usize,
        now: i64,
    ) -> StoreResult<bool> {
        let mut a = self.accounts();
        let Some(dc) = a.device_codes.get_mut(id) else {
            return Ok(false);
        };
        if dc.status != DeviceStatus::Approved || dc.expires_at <= now {
            return Ok(false);
        }
        dc.status = DeviceStatus::Consumed;
        let user = session.user_id.clone();
        a.next_cli_session_seq += 1;
        let seq = a.next_cli_session_seq;
        a.cli_session_seq.insert(session.id.clone(), seq);
        a.cli_sessions.insert(session.id.clone(), session);
        revoke_beyond(&mut a, &user, max_live, now);
        Ok(true)
    }

    async fn insert_cli_session(&self, session: CliSession, max_live: usize) -> StoreResult<()> {
        let mut a = self.accounts();
        let (user, now) = (session.user_id.clone(), session.created_at);
        if a.cli_sessions.contains_key(&session.id) {
            return Err(StoreError::Conflict("session exists".into()));
        }
        a.cli_sessions.insert(session.id.clone(), session);
        revoke_beyond(&mut a, &user, max_live, now);
        Ok(())
    }

    async fn cli_session_by_hash(&self, token_hash: &str) -> StoreResult<Option<CliSession>> {
        Ok(self
            .accounts()
            .cli_sessions
            .values()
            .find(|s| s.token_hash == token_hash)
            .cloned())
    }

    async fn touch_cli_session(&self, id: &str, now: i64) -> StoreResult<()> {
        if let Some(s) = self.accounts().cli_sessions.get_mut(id) {
            s.last_seen_at = Some(now);
        }
        Ok(())
    }

    async fn revoke_cli_session_by_hash(&self, token_hash: &str, now: i64) -> StoreResult<bool> {
        let mut a = self.accounts();
        match a
            .cli_sessions
            .values_mut()
            .find(|s| s.token_hash == token_hash && s.revoked_at.is_none())
        {
            Some(s) => {
                s.revoked_at = Some(now);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn revoke_cli_session(&self, user_id: &str, id: &str, now: i64) -> StoreResult<bool> {
        let mut a = self.accounts();
        match a.cli_sessions.get_mut(id) {
            Some(s) if s.user_id == user_id && s.revoked_at.is_none() => {
                s.revoked_at = Some(now);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn cli_sessions(&self, user_id: &str, now: i64) -> StoreResult<Vec<CliSession>> {
        let mut v: Vec<CliSession> = self
            .accounts()
            .cli_sessions
            .values()
            .filter(|s| s.user_id == user_id && s.is_live(now))
            .cloned()
            .collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        Ok(v)
    }

    async fn create_web_session(&self, session: WebSession) -> StoreResult<()> {
        let mut a = self.accounts();
        let now = session.created_at;
        a.web_sessions.retain(|_, s| s.expires_at > now);
        a.web_sessions.insert(session.id_hash.clone(), session);
        Ok(())
    }

    async fn web_session(&self, id_hash: &str, now: i64) -> StoreResult<Option<WebSession>> {
        Ok(self
            .accounts()
            .web_sessions
            .get(id_hash)
            .filter(|s| s.expires_at > now)
            .cloned())
    }

    async fn delete_web_session(&self, id_hash: &str) -> StoreResult<()> {
        self.accounts().web_sessions.remove(id_hash);
        Ok(())
    }

    async fn delete_web_sessions_of(&self, user_id: &str) -> StoreResult<()> {
        self.accounts()
            .web_sessions
            .retain(|_, s| s.user_id != user_id);
        Ok(())
    }

    async fn use_sync_jti(&self, jti: &str, expires_at: i64, now: i64) -> StoreResult<bool> {
        let mut a = self.accounts();
        a.jtis.retain(|_, exp| *exp > now);
        if a.jtis.contains_key(jti) {
            return Ok(false);
        }
        a.jtis.insert(jti.to_string(), expires_at);
        Ok(true)
    }

    async fn create_owned_mesh(&self, mesh: Mesh, owner: NewMember) -> StoreResult<Member> {
        if self.slug_taken(&mesh.slug).await? {
            return Err(StoreError::Conflict(format!(
                "slug {:?} is taken",
                mesh.slug
            )));
        }
        let id = mesh.id.clone();
        self.create_mesh(mesh).await?;
        self.accounts().meshes.insert(id.clone(), None);
        self.add_member(&id, owner).await
    }

    async fn slug_taken(&self, slug: &str) -> StoreResult<bool> {
        let known: Vec<(String, Option<String>)> = {
            let a = self.accounts();
            a.meshes
                .iter()
                .filter(|(id, _)| !a.archived.contains(*id))
                .map(|(id, s)| (id.clone(), s.clone()))
                .collect()
        };
        for (id, renamed) in known {
            let slug_now = match renamed {
                Some(s) => Some(s),
                None => MeshStore::mesh(self, &id).await?.map(|m| m.slug),
            };
            if slug_now.as_deref() == Some(slug) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn user_meshes(&self, user_id: &str) -> StoreResult<Vec<UserMesh>> {
        let ids: Vec<String> = self.accounts().meshes.keys().cloned().collect();
        let mut out = Vec::new();
        for id in ids {
            if let Some(m) = self.memory_user_mesh(user_id, &id).await? {
                out.push(m);
            }
        }
        out.sort_by_key(|m| m.mesh.created_at);
        Ok(out)
    }

    async fn user_mesh_by_slug(&self, user_id: &str, slug: &str) -> StoreResult<Option<UserMesh>> {
        Ok(self
            .user_meshes(user_id)
            .await?
            .into_iter()
            .find(|m| m.mesh.slug == slug))
    }

    async fn rename_mesh(&self, mesh_id: &str, slug: &str) -> StoreResult<()> {
        if self.slug_taken(slug).await? {
            return Err(StoreError::Conflict(format!("slug {slug:?} is taken")));
        }
        self.accounts()
            .meshes
            .insert(mesh_id.to_string(), Some(slug.to_string()));
        Ok(())
    }

    async fn archive_mesh(&self, mesh_id: &str, _now: i64) -> StoreResult<()> {
        self.accounts().archived.insert(mesh_id.to_string());
        Ok(())
    }

    async fn mesh_archived(&self, mesh_id: &str) -> StoreResult<bool> {
        Ok(self.accounts().archived.contains(mesh_id))
    }

    async fn link_member(&self, mesh_id: &str, member_id: &str, user_id: &str) -> StoreResult<()> {
        self.accounts()
            .meshes
            .entry(mesh_id.to_string())
            .or_default();
        self.accounts().links.insert(
            (mesh_id.to_string(), member_id.to_string()),
            user_id.to_string(),
        );
        Ok(())
    }
}
