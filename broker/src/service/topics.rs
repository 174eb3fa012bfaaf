//! The operations of topics (extensions §9, rest.md §4.1–4.8), without a transport: create,
//! list (with unread counts), resolve, join/leave, members, history pages, posts (the
//! `#<topicId>` branch of `send`), read marks, mention notifications and the topic-key
//! routes.
//!
//! Every function takes the acting [`Principal`] and uses `principal.member` (and
//! `principal.mesh`) for membership and authorship; none assumes a presence exists, so the
//! REST layer calls them with an API-key principal. Everything durable is in the store
//! ([`crate::store::topics::TopicStore`]); a post is fanned out at send time on the mesh bus
//! to every live presence of every other topic member on every replica (**Beyond:** the
//! reference reaches at most one).
//!
//! Refusals are [`TopicError`]: `code()` is the WebSocket `error.code` (or the REST
//! `error` string), `message()` the text, `http_status()` the REST status, and
//! `metric_label()` the `reason` of `broker_topic_requests_refused_total`.
//!
//! **Topic keys:** a new topic gets a random 32-byte key, sealed for its creator as
//! base64(throwaway x25519 public key ‖ `crypto_box_easy(key, nonce, x25519(creator's
//! ed25519 key), throwaway secret)`) with the nonce; the throwaway public key (hex) is the
//! topic's `encrypted_key_pubkey`. The broker holds the plaintext key only for the moment of
//! sealing and zeroises it.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use crypto_box::aead::Aead;
use serde_json::json;
use tracing::warn;
use zeroize::Zeroize;

use super::send::{Delivery, SendError, SendOutcome, SendRequest};
use super::{Principal, ServiceCtx};
use crate::cluster::bus::MeshEvent;
use crate::ids::{self, now_ms};
use crate::protocol::ext::topics::{TopicPush, TopicSendFields};
use crate::protocol::{self, Priority};
use crate::routing;
use crate::store::topics::{
    Created, Joined, MarkWhich, Notification, NotificationView, Sealed, SealedKey, Topic,
    TopicMember, TopicMessage,
};
use crate::store::{Member, Role, StoreError};

/// Most explicit mentions of one post, and most `@name` tokens read from a body.
pub const MAX_MENTIONS: usize = 16;
/// Most notification rows one post writes.
pub const MAX_NOTIFICATIONS_PER_POST: usize = 32;
/// History page size without a `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;
/// Most rows of one notification list (rest.md §4.8) and of one pending-seals answer.
pub const NOTIFICATION_PAGE: usize = 50;
pub const PENDING_SEALS_PAGE: usize = 50;
/// The default `since` window of a notification list: 24 h.
pub const NOTIFICATION_WINDOW_MS: i64 = 24 * 3_600_000;

/// Why a topic operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    /// A field missing or not of its shape (`invalid_args`; REST 422).
    Invalid(String),
    /// No topic of that id or name in the caller's mesh (`topic_not_found`, REST 404 with
    /// `topic`).
    NotFound { topic: String },
    /// The mesh holds `MAX_TOPICS_PER_MESH` topics.
    TooManyTopics { max: usize },
    /// The topic has `MAX_TOPIC_MEMBERS` members.
    TopicFull { max: usize },
    /// A private/dm topic the caller is no member of (`forbidden`; REST 403).
    NotMember,
    /// The caller's member row is revoked (banned) or gone.
    Revoked { mesh_name: String },
    /// REST 409 `topic_unencrypted`: the topic has no key.
    Unencrypted { topic: String },
    /// REST 404 `key_not_sealed_for_member`.
    NotSealed { topic: String },
    /// REST 409 `already_encrypted` (also when a claim race is lost).
    AlreadyEncrypted {
        topic: String,
        sender_pubkey: Option<String>,
    },
    /// REST 404 `recipient_not_in_topic`.
    RecipientNotInTopic,
    /// REST 409 `already_sealed`: **Ours:** a copy exists and the caller neither seals for
    /// itself nor is an admin.
    AlreadySealed,
    /// A backend failed; nothing was done.
    Unavailable(String),
}

impl TopicError {
    /// The `reason` label of `broker_topic_requests_refused_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            TopicError::Invalid(_) => "invalid",
            TopicError::NotFound { .. } => "not_found",
            TopicError::TooManyTopics { .. } => "too_many_topics",
            TopicError::TopicFull { .. } => "topic_full",
            TopicError::NotMember => "not_member",
            TopicError::Revoked { .. } => "revoked",
            TopicError::Unencrypted { .. }
            | TopicError::NotSealed { .. }
            | TopicError::AlreadyEncrypted { .. }
            | TopicError::RecipientNotInTopic
            | TopicError::AlreadySealed => "key",
            TopicError::Unavailable(_) => "store",
        }
    }

    /// The WebSocket `error.code`, and the REST `error` string of the key routes.
    pub fn code(&self) -> &'static str {
        match self {
            TopicError::Invalid(_) => "invalid_args",
            TopicError::NotFound { .. } => "topic_not_found",
            TopicError::TooManyTopics { .. } => "too_many_topics",
            TopicError::TopicFull { .. } => "topic_full",
            TopicError::NotMember | TopicError::Revoked { .. } => "forbidden",
            TopicError::Unencrypted { .. } => "topic_unencrypted",
            TopicError::NotSealed { .. } => "key_not_sealed_for_member",
            TopicError::AlreadyEncrypted { .. } => "already_encrypted",
            TopicError::RecipientNotInTopic => "recipient_not_in_topic",
            TopicError::AlreadySealed => "already_sealed",
            TopicError::Unavailable(_) => "internal",
        }
    }

    /// The REST status (rest.md §4).
    pub fn http_status(&self) -> u16 {
        match self {
            TopicError::Invalid(_) => 422,
            TopicError::NotFound { .. }
            | TopicError::NotSealed { .. }
            | TopicError::RecipientNotInTopic => 404,
            TopicError::TooManyTopics { .. } | TopicError::TopicFull { .. } => 409,
            TopicError::NotMember | TopicError::Revoked { .. } => 403,
            TopicError::Unencrypted { .. }
            | TopicError::AlreadyEncrypted { .. }
            | TopicError::AlreadySealed => 409,
            TopicError::Unavailable(_) => 503,
        }
    }

    /// The exact text (WebSocket `error.message`; REST `hint` where rest.md gives one).
    pub fn message(&self) -> String {
        match self {
            TopicError::Invalid(why) => why.clone(),
            TopicError::NotFound { topic } => format!("topic {topic:?} not found"),
            TopicError::TooManyTopics { max } => {
                format!("this mesh already has {max} topics (MAX_TOPICS_PER_MESH)")
            }
            TopicError::TopicFull { max } => {
                format!("this topic already has {max} members (MAX_TOPIC_MEMBERS)")
            }
            TopicError::NotMember => "not a member of this private topic".into(),
            TopicError::Revoked { mesh_name } => {
                format!("You've been removed from {mesh_name:?}. Contact the mesh owner to rejoin.")
            }
            TopicError::Unencrypted { .. } => {
                "legacy v0.2.0 topic — messages are base64 plaintext".into()
            }
            TopicError::NotSealed { .. } => {
                "join the topic, then ask an existing member to re-seal".into()
            }
            TopicError::AlreadyEncrypted { .. } => "this topic already has a key".into(),
            TopicError::RecipientNotInTopic => "recipient_not_in_topic".into(),
            TopicError::AlreadySealed => {
                "a sealed copy exists; only its member or an admin may replace it".into()
            }
            TopicError::Unavailable(e) => format!("topics unavailable: {e}"),
        }
    }
}

impl std::fmt::Display for TopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for TopicError {}

fn unavailable(e: StoreError) -> TopicError {
    TopicError::Unavailable(e.to_string())
}

/// Counts a refusal.
fn counted<T>(ctx: &ServiceCtx, result: Result<T, TopicError>) -> Result<T, TopicError> {
    if let Err(e) = &result {
        ctx.metrics().refuse_topic(e.metric_label());
    }
    result
}

/// The mesh's member rows through the cache, and the caller's own (not revoked).
async fn caller(
    ctx: &ServiceCtx,
    p: &Principal,
) -> Result<(std::sync::Arc<Vec<Member>>, Member), TopicError> {
    let members = ctx.members(&p.mesh.id).await.map_err(unavailable)?;
    let me = members
        .iter()
        .find(|m| m.id == p.member.id && m.revoked_at.is_none())
        .cloned()
        .ok_or_else(|| TopicError::Revoked {
            mesh_name: p.mesh.name.clone(),
        })?;
    Ok((members, me))
}

/// Whether the member is an admin of the mesh: role `admin` or the mesh owner.
pub fn is_admin(p: &Principal, m: &Member) -> bool {
    m.role == Role::Admin || (p.mesh.owner_user_id.is_some() && m.user_id == p.mesh.owner_user_id)
}

fn is_restricted(t: &Topic) -> bool {
    t.visibility == "private" || t.visibility == "dm"
}

/// Whether `s` may be a topic id: ≥20 characters of `[A-Za-z0-9_-]` (extensions §9).
pub fn looks_like_id(s: &str) -> bool {
    s.len() >= 20
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A new topic id: 32 lowercase base36 characters, so that the CLI's `send '#<id>'` (which
/// treats `#` + ≥20 of `[0-9a-z_-]` as an id) sends it as is.
fn new_topic_id() -> String {
    ids::random_id(32).to_ascii_lowercase()
}

/// A `topic_create` (or a REST/dashboard create).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateTopic {
    pub name: String,
    pub description: Option<String>,
    /// `public` (default), `private` or `dm`.
    pub visibility: Option<String>,
}

/// What [`create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOutcome {
    /// The new topic, or the existing one of that name.
    pub topic: Topic,
    /// `false`: the name existed (nothing changed).
    pub created: bool,
}

/// Seals `key` for the holder of the ed25519 public key `member_pubkey_hex`: (base64 of
/// throwaway x25519 public ‖ box, base64 nonce, hex throwaway public key). `None` when the
/// member key is no valid ed25519 point.
fn seal_for(key: &[u8; 32], member_pubkey_hex: &str) -> Option<(String, String, String)> {
    let bytes: [u8; 32] = hex::decode(member_pubkey_hex).ok()?.try_into().ok()?;
    let ed = ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()?;
    let member_x = crypto_box::PublicKey::from(ed.to_montgomery());
    let mut secret_bytes: [u8; 32] = rand::random();
    let throwaway = crypto_box::SecretKey::from_bytes(secret_bytes);
    secret_bytes.zeroize();
    let throwaway_pub = throwaway.public_key();
    let nonce_bytes: [u8; 24] = rand::random();
    let nonce = crypto_box::Nonce::from(nonce_bytes);
    let sealed = crypto_box::SalsaBox::new(&member_x, &throwaway)
        .encrypt(&nonce, &key[..])
        .ok()?;
    let mut blob = Vec::with_capacity(32 + sealed.len());
    blob.extend_from_slice(throwaway_pub.as_bytes());
    blob.extend_from_slice(&sealed);
    Some((
        STANDARD.encode(blob),
        STANDARD.encode(nonce_bytes),
        hex::encode(throwaway_pub.as_bytes()),
    ))
}

/// `topic_create`: creates the topic with the caller as `lead` and a key sealed for it, or
/// returns the existing non-archived topic of that name (`created:false`, the caller added
/// as `lead` if it was no member; not to a private/dm topic unless it is an admin). **Ours:** the
/// name is 1–`MAX_TOPIC_NAME_CHARS` characters without a leading `#`; the mesh holds at
/// most `MAX_TOPICS_PER_MESH` topics.
pub async fn create(
    ctx: &ServiceCtx,
    p: &Principal,
    req: CreateTopic,
) -> Result<CreateOutcome, TopicError> {
    let result = async {
        let c = ctx.config();
        let name = req.name.trim().to_string();
        if name.is_empty() {
            return Err(TopicError::Invalid("topic_create needs a name".into()));
        }
        if name.starts_with('#') {
            return Err(TopicError::Invalid(
                "a topic name does not start with '#'".into(),
            ));
        }
        if name.chars().count() > c.max_topic_name_chars {
            return Err(TopicError::Invalid(format!(
                "a topic name is at most {} characters (MAX_TOPIC_NAME_CHARS)",
                c.max_topic_name_chars
            )));
        }
        if name.chars().any(char::is_control) {
            return Err(TopicError::Invalid(
                "a topic name has no control characters".into(),
            ));
        }
        let visibility = req.visibility.clone().unwrap_or_else(|| "public".into());
        if !["public", "private", "dm"].contains(&visibility.as_str()) {
            return Err(TopicError::Invalid(
                "visibility must be \"public\", \"private\" or \"dm\"".into(),
            ));
        }
        if req
            .description
            .as_ref()
            .is_some_and(|d| d.len() > c.max_topic_description_bytes)
        {
            return Err(TopicError::Invalid(format!(
                "a topic description is at most {} bytes (MAX_TOPIC_DESCRIPTION_BYTES)",
                c.max_topic_description_bytes
            )));
        }
        let (_, me) = caller(ctx, p).await?;
        // A cheap read first: an existing name needs no key.
        if let Some(t) = ctx
            .store()
            .topic_by_name(&p.mesh.id, &name)
            .await
            .map_err(unavailable)?
        {
            return existing(ctx, p, &me, t).await;
        }
        let now = now_ms();
        let id = new_topic_id();
        let mut key: [u8; 32] = rand::random();
        let sealed = seal_for(&key, &me.pubkey);
        key.zeroize();
        let (creator_key, key_pubkey) = match sealed {
            Some((encrypted_key, nonce, pubkey)) => (
                Some(SealedKey {
                    topic_id: id.clone(),
                    member_id: me.id.clone(),
                    encrypted_key,
                    nonce,
                    sealed_at: now,
                }),
                Some(pubkey),
            ),
            None => (None, None),
        };
        let topic = Topic {
            id,
            mesh_id: p.mesh.id.clone(),
            name,
            description: req.description.filter(|d| !d.is_empty()),
            visibility,
            created_by_member_id: Some(me.id.clone()),
            encrypted_key_pubkey: key_pubkey,
            created_at: now,
            archived_at: None,
        };
        match ctx
            .store()
            .topic_create(topic, creator_key, c.max_topics_per_mesh)
            .await
            .map_err(unavailable)?
        {
            Created::New(topic) => {
                ctx.metrics().topic_created();
                ctx.audit(
                    &p.mesh.id,
                    "topic_created",
                    Some(&me.id),
                    json!({"topicId": topic.id, "name": topic.name}),
                );
                Ok(CreateOutcome {
                    topic,
                    created: true,
                })
            }
            Created::Existing(topic) => existing(ctx, p, &me, topic).await,
            Created::TooMany => Err(TopicError::TooManyTopics {
                max: c.max_topics_per_mesh,
            }),
        }
    }
    .await;
    counted(ctx, result)
}

/// `topic_create` of an existing name: the creator is added as `lead` unless it is a member
/// already (existing memberships are not changed); **Ours:** not to a private/dm topic
/// unless it is an admin (as for a join). A full topic leaves it out silently.
async fn existing(
    ctx: &ServiceCtx,
    p: &Principal,
    me: &Member,
    topic: Topic,
) -> Result<CreateOutcome, TopicError> {
    if !is_restricted(&topic) || is_admin(p, me) {
        ctx.store()
            .topic_join(
                &topic.id,
                &me.id,
                "lead",
                now_ms(),
                ctx.config().max_topic_members,
            )
            .await
            .map_err(unavailable)?;
    }
    Ok(CreateOutcome {
        topic,
        created: false,
    })
}

/// One topic of [`list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSummary {
    pub topic: Topic,
    pub member_count: u64,
    /// Messages by others newer than the caller's `lastReadAt` (all if it never read).
    pub unread: u64,
}

/// `topic_list` / REST `GET /topics`: the mesh's non-archived topics by name, with member
/// counts and the caller's unread counts, at most `MAX_TOPICS_PER_MESH`.
pub async fn list(ctx: &ServiceCtx, p: &Principal) -> Result<Vec<TopicSummary>, TopicError> {
    let result = async {
        caller(ctx, p).await?;
        let limit = match ctx.config().max_topics_per_mesh {
            0 => usize::MAX,
            n => n,
        };
        let store = ctx.store();
        let (topics, unread) = tokio::try_join!(
            store.topic_list(&p.mesh.id, limit),
            store.topic_unread_counts(&p.mesh.id, &p.member.id)
        )
        .map_err(unavailable)?;
        Ok(topics
            .into_iter()
            .map(|l| TopicSummary {
                unread: unread.get(&l.topic.id).copied().unwrap_or(0),
                topic: l.topic,
                member_count: l.member_count,
            })
            .collect())
    }
    .await;
    counted(ctx, result)
}

/// Resolves `topic` as the WebSocket does: a value that [`looks_like_id`] is tried as an id
/// of the caller's mesh first, then as a name; archived topics never match by name.
pub async fn resolve(ctx: &ServiceCtx, p: &Principal, topic: &str) -> Result<Topic, TopicError> {
    let result = async {
        let store = ctx.store();
        if looks_like_id(topic)
            && let Some(t) = store
                .topic_by_id(&p.mesh.id, topic)
                .await
                .map_err(unavailable)?
        {
            return Ok(t);
        }
        resolve_name_inner(ctx, p, topic).await
    }
    .await;
    counted(ctx, result)
}

/// Resolves `name` as REST does (rest.md §3): by name only, among the mesh's non-archived
/// topics. Unknown → [`TopicError::NotFound`] (404 `{error:"topic_not_found", topic}`).
pub async fn resolve_name(
    ctx: &ServiceCtx,
    p: &Principal,
    name: &str,
) -> Result<Topic, TopicError> {
    counted(ctx, resolve_name_inner(ctx, p, name).await)
}

async fn resolve_name_inner(
    ctx: &ServiceCtx,
    p: &Principal,
    name: &str,
) -> Result<Topic, TopicError> {
    if name.is_empty() || name.len() > 4 * ctx.config().max_topic_name_chars {
        return Err(TopicError::NotFound {
            topic: name.to_string(),
        });
    }
    ctx.store()
        .topic_by_name(&p.mesh.id, name)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| TopicError::NotFound {
            topic: name.to_string(),
        })
}

/// What [`join`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    Joined,
    /// Already a member: the membership (and its role) is unchanged.
    AlreadyMember,
    /// **Ours:** a private/dm topic the caller may not join by itself (it is no admin):
    /// silently ignored.
    Ignored,
}

/// `topic_join`: adds the caller with `role` (`lead`/`member`/`observer`, default `member`).
/// **Ours:** a `private`/`dm` topic is joined only by admins; others are ignored. At most
/// `MAX_TOPIC_MEMBERS` members.
pub async fn join(
    ctx: &ServiceCtx,
    p: &Principal,
    topic: &Topic,
    role: Option<&str>,
) -> Result<JoinOutcome, TopicError> {
    let result = async {
        let role = role.unwrap_or("member");
        if !["lead", "member", "observer"].contains(&role) {
            return Err(TopicError::Invalid(
                "role must be \"lead\", \"member\" or \"observer\"".into(),
            ));
        }
        let (_, me) = caller(ctx, p).await?;
        if is_restricted(topic) && !is_admin(p, &me) {
            return Ok(JoinOutcome::Ignored);
        }
        let max = ctx.config().max_topic_members;
        match ctx
            .store()
            .topic_join(&topic.id, &me.id, role, now_ms(), max)
            .await
            .map_err(unavailable)?
        {
            Joined::New => Ok(JoinOutcome::Joined),
            Joined::Already => Ok(JoinOutcome::AlreadyMember),
            Joined::Full => Err(TopicError::TopicFull { max }),
        }
    }
    .await;
    counted(ctx, result)
}

/// Adds another mesh member to the topic with `role` (default `member`): **Ours:** the way
/// into a `private`/`dm` topic, for callers that are a member of the topic or an admin
/// ([`TopicError::NotMember`] otherwise). The member must be a non-revoked member of the
/// mesh ([`TopicError::RecipientNotInTopic`] otherwise). Within `MAX_TOPIC_MEMBERS`.
pub async fn add_member(
    ctx: &ServiceCtx,
    p: &Principal,
    topic: &Topic,
    member_id: &str,
    role: Option<&str>,
) -> Result<JoinOutcome, TopicError> {
    let result = async {
        let role = role.unwrap_or("member");
        if !["lead", "member", "observer"].contains(&role) {
            return Err(TopicError::Invalid(
                "role must be \"lead\", \"member\" or \"observer\"".into(),
            ));
        }
        let (members, me) = caller(ctx, p).await?;
        if !is_admin(p, &me) {
            member_or_refuse(ctx, topic, &me.id).await?;
        }
        if !members
            .iter()
            .any(|m| m.id == member_id && m.revoked_at.is_none())
        {
            return Err(TopicError::RecipientNotInTopic);
        }
        let max = ctx.config().max_topic_members;
        match ctx
            .store()
            .topic_join(&topic.id, member_id, role, now_ms(), max)
            .await
            .map_err(unavailable)?
        {
            Joined::New => Ok(JoinOutcome::Joined),
            Joined::Already => Ok(JoinOutcome::AlreadyMember),
            Joined::Full => Err(TopicError::TopicFull { max }),
        }
    }
    .await;
    counted(ctx, result)
}

/// `topic_leave`: removes the caller's membership and its sealed key copy; whether it was
/// a member.
pub async fn leave(ctx: &ServiceCtx, p: &Principal, topic: &Topic) -> Result<bool, TopicError> {
    let result = async {
        ctx.store()
            .topic_leave(&topic.id, &p.member.id)
            .await
            .map_err(unavailable)
    }
    .await;
    counted(ctx, result)
}

/// One member of [`members`].
#[derive(Debug, Clone)]
pub struct TopicMemberView {
    pub membership: TopicMember,
    /// The mesh member row (`pubkey`, `display_name`, `user_id`…).
    pub member: Member,
}

/// `topic_members`: the topic's non-revoked members by display name. A private/dm topic's
/// members are shown to its members and admins only.
pub async fn members(
    ctx: &ServiceCtx,
    p: &Principal,
    topic: &Topic,
) -> Result<Vec<TopicMemberView>, TopicError> {
    let result = async {
        let (mesh_members, me) = caller(ctx, p).await?;
        let rows = ctx
            .store()
            .topic_members(&topic.id)
            .await
            .map_err(unavailable)?;
        if is_restricted(topic) && !is_admin(p, &me) && !rows.iter().any(|r| r.member_id == me.id) {
            return Err(TopicError::NotMember);
        }
        let by_id: HashMap<&str, &Member> =
            mesh_members.iter().map(|m| (m.id.as_str(), m)).collect();
        let mut out: Vec<TopicMemberView> = rows
            .into_iter()
            .filter_map(|r| {
                let m = by_id.get(r.member_id.as_str())?;
                m.revoked_at.is_none().then(|| TopicMemberView {
                    member: (*m).clone(),
                    membership: r,
                })
            })
            .collect();
        out.sort_by(|a, b| a.member.display_name.cmp(&b.member.display_name));
        Ok(out)
    }
    .await;
    counted(ctx, result)
}

/// `topic_history` / REST `GET /topics/:name/messages`: newest first, `limit` clamped to
/// 1…`TOPIC_HISTORY_MAX_LIMIT` (default 50), strictly older than `before_id` when that is a
/// message of the topic (an unknown id gives the latest page). A private/dm topic's history
/// is read by its members and admins only.
pub async fn history(
    ctx: &ServiceCtx,
    p: &Principal,
    topic: &Topic,
    limit: Option<i64>,
    before_id: Option<&str>,
) -> Result<Vec<TopicMessage>, TopicError> {
    let result = async {
        let (_, me) = caller(ctx, p).await?;
        if is_restricted(topic) && !is_admin(p, &me) {
            member_or_refuse(ctx, topic, &me.id).await?;
        }
        let max = ctx.config().topic_history_max_limit.max(1) as i64;
        let requested = limit.unwrap_or(DEFAULT_HISTORY_LIMIT as i64);
        if requested > max {
            ctx.metrics().clamp_topic_history();
        }
        let limit = requested.clamp(1, max) as usize;
        let before = before_id.filter(|b| !b.is_empty() && b.len() <= 128);
        ctx.store()
            .topic_history(&topic.id, before, limit)
            .await
            .map_err(unavailable)
    }
    .await;
    counted(ctx, result)
}

/// New messages for a stream (REST SSE, rest.md §4.4), **oldest first**, at most
/// `limit` (clamped to 1…`TOPIC_HISTORY_MAX_LIMIT`): strictly after the message `after_id`
/// (a `Last-Event-ID`) when that is a message of the topic, else those created after
/// `created_after` (ms epoch, e.g. the connect time). The same visibility rule as
/// [`history`].
pub async fn messages_after(
    ctx: &ServiceCtx,
    p: &Principal,
    topic: &Topic,
    after_id: Option<&str>,
    created_after: i64,
    limit: usize,
) -> Result<Vec<TopicMessage>, TopicError> {
    let result = async {
        let (_, me) = caller(ctx, p).await?;
        if is_restricted(topic) && !is_admin(p, &me) {
            member_or_refuse(ctx, topic, &me.id).await?;
        }
        let limit = limit.clamp(1, ctx.config().topic_history_max_limit.max(1));
        let after = after_id.filter(|a| !a.is_empty() && a.len() <= 128);
        ctx.store()
            .topic_messages_after(&topic.id, after, created_after, limit)
            .await
            .map_err(unavailable)
    }
    .await;
    counted(ctx, result)
}

async fn member_or_refuse(
    ctx: &ServiceCtx,
    topic: &Topic,
    member_id: &str,
) -> Result<TopicMember, TopicError> {
    ctx.store()
        .topic_member(&topic.id, member_id)
        .await
        .map_err(unavailable)?
        .ok_or(TopicError::NotMember)
}

/// `topic_mark_read` / REST `PATCH /topics/:name/read`: sets the caller's `lastReadAt` to
/// now and returns it. Without `join` (WebSocket) a non-member is left alone (`None`); with
/// `join` (REST) it becomes a `member` first (within `MAX_TOPIC_MEMBERS`; **Ours:** not for a
/// private/dm topic unless it is an admin, [`TopicError::NotMember`]).
pub async fn mark_read(
    ctx: &ServiceCtx,
    p: &Principal,
    topic: &Topic,
    join: bool,
) -> Result<Option<i64>, TopicError> {
    let result = async {
        let (_, me) = caller(ctx, p).await?;
        let join = join && (!is_restricted(topic) || is_admin(p, &me));
        let now = now_ms();
        let max = ctx.config().max_topic_members;
        let marked = ctx
            .store()
            .topic_mark_read(&topic.id, &me.id, now, join, max)
            .await
            .map_err(unavailable)?;
        if marked {
            return Ok(Some(now));
        }
        if join {
            return Err(TopicError::TopicFull { max });
        }
        Ok(None)
    }
    .await;
    let result = match result {
        Ok(None) if join => Err(TopicError::NotMember),
        other => other,
    };
    counted(ctx, result)
}

/// A post to a topic from REST (`POST /messages`, rest.md §4.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostRequest {
    /// The resolved topic's id.
    pub topic_id: String,
    pub nonce: String,
    pub ciphertext: String,
    pub priority: Priority,
    /// 1 (default) or 2.
    pub body_version: Option<u8>,
    pub mentions: Option<Vec<String>>,
    pub reply_to_id: Option<String>,
}

/// What a post did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostOutcome {
    pub topic: Topic,
    /// The stored message (`id` = `messageId` = `historyId`; `reply_to_id` only if it was
    /// accepted; `queue_id` = the delivery record's id, `queueId`).
    pub message: TopicMessage,
    /// Mention notifications written.
    pub notifications: usize,
    /// Presences the post was published to.
    pub presences: usize,
}

/// REST `POST /messages`: the same path as a WebSocket `send` to `#<topicId>`
/// ([`crate::service::send::send_to_topic`]): rate limit, size, revocation, the topic's
/// checks, storage, mentions, the fan-out with grant `broadcast`, audit and metrics.
/// **Ours:** a private/dm topic is posted to by its members only ([`SendError::TopicRefused`]).
pub async fn post(
    ctx: &ServiceCtx,
    p: &Principal,
    req: PostRequest,
) -> Result<PostOutcome, SendError> {
    let send = SendRequest {
        target_spec: format!("#{}", req.topic_id),
        priority: req.priority,
        nonce: req.nonce,
        ciphertext: req.ciphertext,
        client_message_id: None,
    };
    let fields = TopicSendFields {
        mentions: req.mentions,
        reply_to_id: req.reply_to_id,
        body_version: req.body_version,
    };
    let (_, post) = super::send::send_to_topic(ctx, p, send, fields, |_| {}).await?;
    post.ok_or_else(|| SendError::Unavailable("topic post without outcome".into()))
}

/// The `@name` tokens of a v1 body (base64 of UTF-8), lowercased, at most [`MAX_MENTIONS`].
pub fn body_mentions(ciphertext: &str) -> Vec<String> {
    let Ok(bytes) = STANDARD.decode(ciphertext) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut out: Vec<String> = Vec::new();
    let mut rest = text.as_ref();
    while let Some(at) = rest.find('@') {
        let after = &rest[at + 1..];
        let end = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(after.len());
        let name = after[..end].to_lowercase();
        if !name.is_empty() && !out.contains(&name) {
            out.push(name);
            if out.len() >= MAX_MENTIONS {
                break;
            }
        }
        rest = &after[end..];
    }
    out
}

/// Explicit mentions as posted: lowercased, a leading `@` dropped, 1–64 characters, at most
/// [`MAX_MENTIONS`].
fn explicit_mentions(mentions: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in mentions.iter().take(MAX_MENTIONS) {
        let m = m.strip_prefix('@').unwrap_or(m).to_lowercase();
        if !m.is_empty() && m.chars().count() <= 64 && !out.contains(&m) {
            out.push(m);
        }
    }
    out
}

/// The `#<topicId>` branch of `send` (called by [`crate::service::send`] after the rate
/// limit, size and revocation checks): resolves the topic in the sender's mesh, stores the
/// message and its mention notifications, fans it out to every live presence of every other
/// topic member (grant `broadcast` required), and records the delivery (`message_status`)
/// as delivered. `queue_id` is the `ack`'s `messageId`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send_post(
    ctx: &ServiceCtx,
    p: &Principal,
    members: &[Member],
    topic_id: &str,
    req: SendRequest,
    fields: TopicSendFields,
    queue_id: String,
    now: i64,
    accepted: impl FnOnce(&SendOutcome),
) -> Result<(SendOutcome, PostOutcome), SendError> {
    let unavailable = |e: &dyn std::fmt::Display| SendError::Unavailable(e.to_string());
    let store = ctx.store();
    let topic = match store.topic_by_id(&p.mesh.id, topic_id).await {
        Ok(Some(t)) if t.archived_at.is_none() => t,
        Ok(_) => {
            ctx.metrics().refuse_topic("not_found");
            return Err(SendError::TopicNotFound);
        }
        Err(e) => return Err(unavailable(&e)),
    };
    let body_version = fields.body_version.unwrap_or(1);
    if body_version != 1 && body_version != 2 {
        ctx.metrics().refuse_topic("invalid");
        return Err(SendError::TopicRefused("bodyVersion must be 1 or 2".into()));
    }
    let topic_members = store
        .topic_members(&topic.id)
        .await
        .map_err(|e| unavailable(&e))?;
    if is_restricted(&topic) && !topic_members.iter().any(|m| m.member_id == p.member.id) {
        ctx.metrics().refuse_topic("not_member");
        return Err(SendError::TopicRefused(TopicError::NotMember.message()));
    }

    // Mentions: explicit ones, else `@name` tokens of a v1 body.
    let names = match &fields.mentions {
        Some(m) => explicit_mentions(m),
        None if body_version == 1 => body_mentions(&req.ciphertext),
        None => Vec::new(),
    };
    let mut notifications: Vec<Notification> = Vec::new();
    let message_id = ids::random_id(32);
    if !names.is_empty() {
        for m in members.iter().filter(|m| {
            m.revoked_at.is_none()
                && m.id != p.member.id
                && names.contains(&m.display_name.to_lowercase())
        }) {
            if notifications.len() >= MAX_NOTIFICATIONS_PER_POST {
                break;
            }
            notifications.push(Notification {
                id: ids::random_id(32),
                mesh_id: p.mesh.id.clone(),
                topic_id: topic.id.clone(),
                message_id: message_id.clone(),
                recipient_member_id: m.id.clone(),
                sender_member_id: p.member.id.clone(),
                kind: "mention".into(),
                read_at: None,
                created_at: now,
            });
        }
    }
    let reply_to_id = fields
        .reply_to_id
        .filter(|r| !r.is_empty() && r.len() <= 128);
    let message = TopicMessage {
        id: message_id,
        topic_id: topic.id.clone(),
        mesh_id: p.mesh.id.clone(),
        sender_member_id: p.member.id.clone(),
        sender_member_pubkey: p.member.pubkey.clone(),
        sender_session_pubkey: p.session_key.clone(),
        sender_name: p.display_name.clone(),
        nonce: req.nonce,
        ciphertext: req.ciphertext,
        body_version,
        reply_to_id,
        queue_id: queue_id.clone(),
        created_at: now,
    };
    let notified = notifications.len();
    let message = store
        .topic_post(message, notifications)
        .await
        .map_err(|e| unavailable(&e))?;
    ctx.metrics().topic_posted(notified);

    // The fan-out: every live presence of every other topic member whose grants let the
    // sender broadcast.
    let records = match ctx.presence().list(&p.mesh.id).await {
        Ok(r) => r,
        Err(e) => {
            // Stored: members catch up through history.
            warn!(error = %e, "presence unavailable; topic post stored, not pushed");
            Vec::new()
        }
    };
    let in_topic: HashMap<&str, ()> = topic_members
        .iter()
        .map(|m| (m.member_id.as_str(), ()))
        .collect();
    let by_id: HashMap<&str, &Member> = members.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut presence_ids = Vec::new();
    for r in &records {
        if !r.is_live()
            || r.member_id == p.member.id
            || !in_topic.contains_key(r.member_id.as_str())
        {
            continue;
        }
        let allowed = by_id.get(r.member_id.as_str()).is_some_and(|m| {
            m.revoked_at.is_none()
                && routing::grants_allow(m, &p.member.pubkey, p.session_key.as_deref(), "broadcast")
        });
        if allowed {
            presence_ids.push(r.presence_id.clone());
        } else {
            ctx.metrics().drop_by_grant("broadcast");
        }
    }
    let presences = presence_ids.len();
    if presences > 0 {
        let frame = protocol::encode(&TopicPush {
            message_id: message.id.clone(),
            mesh_id: p.mesh.id.clone(),
            sender_pubkey: p.routing_key.clone(),
            sender_member_pubkey: p.member.pubkey.clone(),
            sender_member_id: p.member.id.clone(),
            sender_name: p.display_name.clone(),
            priority: req.priority,
            nonce: message.nonce.clone(),
            ciphertext: message.ciphertext.clone(),
            created_at: ids::iso8601_ms(now),
            topic: topic.name.clone(),
            topic_id: topic.id.clone(),
            body_version,
            reply_to_id: message.reply_to_id.clone(),
        });
        let event = MeshEvent::Deliver {
            presence_ids: presence_ids.into(),
            priority: Some(req.priority),
            frame,
            trace: None,
        };
        if let Err(e) = ctx.publish(&p.mesh.id, event).await {
            // Stored: members catch up through history.
            warn!(error = %e, "topic post stored, fan-out not published");
        }
    } else {
        // Nobody live got it, so no push went out: a `Deliver` without recipients still
        // tells every replica's REST streams of the topic (whichever transport posted).
        let event = MeshEvent::Deliver {
            presence_ids: Vec::<String>::new().into(),
            priority: None,
            frame: protocol::encode(&crate::protocol::ext::topics::TopicPosted {
                topic_id: topic.id.clone(),
            }),
            trace: None,
        };
        if let Err(e) = ctx.publish(&p.mesh.id, event).await {
            tracing::debug!(error = %e, "topic wake-up not published; streams poll");
        }
    }
    let outcome = SendOutcome {
        message_id: queue_id.clone(),
        delivery: Delivery::Fanout { presences },
    };
    accepted(&outcome);
    ctx.metrics().routed(req.priority);
    // The delivery record, marked delivered (extensions §9): `message_status` finds it.
    ctx.record_fanout(crate::store::msg_status::SentMessage {
        id: queue_id,
        mesh_id: p.mesh.id.clone(),
        sender_member_id: p.member.id.clone(),
        target: crate::store::msg_status::SentTarget::Fanout {
            spec: format!("#{}", topic.id),
        },
        created_at: now,
        delivered_at: Some(now),
    });
    Ok((
        outcome,
        PostOutcome {
            topic,
            message,
            notifications: notified,
            presences,
        },
    ))
}

/// The caller's sealed copy of a topic key (REST `GET /topics/:name/key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicKey {
    pub sealed: SealedKey,
    /// The topic's `encrypted_key_pubkey` (hex x25519), `senderPubkey`.
    pub sender_pubkey: String,
}

/// REST `GET /topics/:name/key`: the caller's own sealed copy. No key →
/// [`TopicError::Unencrypted`] (409); no copy → [`TopicError::NotSealed`] (404).
pub async fn key(ctx: &ServiceCtx, p: &Principal, topic: &Topic) -> Result<TopicKey, TopicError> {
    let result = async {
        let Some(sender_pubkey) = topic.encrypted_key_pubkey.clone() else {
            return Err(TopicError::Unencrypted {
                topic: topic.name.clone(),
            });
        };
        let sealed = ctx
            .store()
            .topic_key(&topic.id, &p.member.id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| TopicError::NotSealed {
                topic: topic.name.clone(),
            })?;
        Ok(TopicKey {
            sealed,
            sender_pubkey,
        })
    }
    .await;
    counted(ctx, result)
}

/// A REST `claim-key` or `seal` body's sealed copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealedCopy {
    pub encrypted_key: String,
    pub nonce: String,
}

fn check_copy(c: &SealedCopy) -> Result<(), TopicError> {
    if c.encrypted_key.is_empty() || c.encrypted_key.len() > 4096 {
        return Err(TopicError::Invalid(
            "encryptedKey must be 1-4096 characters".into(),
        ));
    }
    if c.nonce.is_empty() || c.nonce.len() > 64 {
        return Err(TopicError::Invalid("nonce must be 1-64 characters".into()));
    }
    Ok(())
}

/// REST `POST /topics/:name/claim-key`: turns an unencrypted topic into a keyed one with
/// `encrypted_key_pubkey` (64 hex, stored lowercased) and the caller's copy, atomically.
/// Returns the lowercased pubkey. A keyed topic (or a lost race) →
/// [`TopicError::AlreadyEncrypted`] with the topic's pubkey.
pub async fn claim_key(
    ctx: &ServiceCtx,
    p: &Principal,
    topic: &Topic,
    encrypted_key_pubkey: &str,
    copy: SealedCopy,
) -> Result<String, TopicError> {
    let result = async {
        let pubkey = encrypted_key_pubkey.to_ascii_lowercase();
        if pubkey.len() != 64 || !pubkey.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TopicError::Invalid(
                "encryptedKeyPubkey must be 64 hex characters".into(),
            ));
        }
        check_copy(&copy)?;
        let (_, me) = caller(ctx, p).await?;
        if is_restricted(topic) && !is_admin(p, &me) {
            member_or_refuse(ctx, topic, &me.id).await?;
        }
        let key = SealedKey {
            topic_id: topic.id.clone(),
            member_id: me.id.clone(),
            encrypted_key: copy.encrypted_key,
            nonce: copy.nonce,
            sealed_at: now_ms(),
        };
        if ctx
            .store()
            .topic_claim_key(&pubkey, key)
            .await
            .map_err(unavailable)?
        {
            return Ok(pubkey);
        }
        let current = ctx
            .store()
            .topic_by_id(&p.mesh.id, &topic.id)
            .await
            .map_err(unavailable)?
            .and_then(|t| t.encrypted_key_pubkey);
        Err(TopicError::AlreadyEncrypted {
            topic: topic.name.clone(),
            sender_pubkey: current,
        })
    }
    .await;
    counted(ctx, result)
}

/// REST `GET /topics/:name/pending-seals`.
#[derive(Debug, Clone)]
pub struct PendingSeals {
    /// The topic's `encrypted_key_pubkey`; `None` (and no rows) for an unencrypted topic.
    pub sender_pubkey: Option<String>,
    /// Non-revoked topic members without a sealed copy, in join order, at most 50.
    pub pending: Vec<Member>,
}

/// REST `GET /topics/:name/pending-seals`.
pub async fn pending_seals(
    ctx: &ServiceCtx,
    p: &Principal,
    topic: &Topic,
) -> Result<PendingSeals, TopicError> {
    let result = async {
        let (members, _) = caller(ctx, p).await?;
        let Some(sender_pubkey) = topic.encrypted_key_pubkey.clone() else {
            return Ok(PendingSeals {
                sender_pubkey: None,
                pending: Vec::new(),
            });
        };
        // Over-fetch a little: revoked members are filtered out here.
        let rows = ctx
            .store()
            .topic_unsealed_members(&topic.id, PENDING_SEALS_PAGE * 2)
            .await
            .map_err(unavailable)?;
        let pending = rows
            .iter()
            .filter_map(|r| {
                members
                    .iter()
                    .find(|m| m.id == r.member_id && m.revoked_at.is_none())
                    .cloned()
            })
            .take(PENDING_SEALS_PAGE)
            .collect();
        Ok(PendingSeals {
            sender_pubkey: Some(sender_pubkey),
            pending,
        })
    }
    .await;
    counted(ctx, result)
}

/// REST `POST /topics/:name/seal`: stores `copy` for `member_id` and returns `sealedAt`.
/// The recipient must be a non-revoked mesh member and a topic member
/// ([`TopicError::RecipientNotInTopic`]); **Ours:** an existing copy is replaced only when
/// the caller seals for itself or is an admin ([`TopicError::AlreadySealed`]).
pub async fn seal(
    ctx: &ServiceCtx,
    p: &Principal,
    topic: &Topic,
    member_id: &str,
    copy: SealedCopy,
) -> Result<i64, TopicError> {
    let result = async {
        if topic.encrypted_key_pubkey.is_none() {
            return Err(TopicError::Unencrypted {
                topic: topic.name.clone(),
            });
        }
        check_copy(&copy)?;
        let (members, me) = caller(ctx, p).await?;
        if !members
            .iter()
            .any(|m| m.id == member_id && m.revoked_at.is_none())
        {
            return Err(TopicError::RecipientNotInTopic);
        }
        if ctx
            .store()
            .topic_member(&topic.id, member_id)
            .await
            .map_err(unavailable)?
            .is_none()
        {
            return Err(TopicError::RecipientNotInTopic);
        }
        let now = now_ms();
        let overwrite = member_id == me.id || is_admin(p, &me);
        let key = SealedKey {
            topic_id: topic.id.clone(),
            member_id: member_id.to_string(),
            encrypted_key: copy.encrypted_key,
            nonce: copy.nonce,
            sealed_at: now,
        };
        match ctx
            .store()
            .topic_seal(key, overwrite)
            .await
            .map_err(unavailable)?
        {
            Sealed::Stored => Ok(now),
            Sealed::AlreadySealed => Err(TopicError::AlreadySealed),
        }
    }
    .await;
    counted(ctx, result)
}

/// REST `GET /notifications`: the caller's mention notifications in its mesh created after
/// `since` (ms epoch; default 24 h ago), newest message first, unread only with
/// `unread_only`, at most 50.
pub async fn notifications(
    ctx: &ServiceCtx,
    p: &Principal,
    since: Option<i64>,
    unread_only: bool,
) -> Result<Vec<NotificationView>, TopicError> {
    let result = async {
        let since = since.unwrap_or_else(|| now_ms() - NOTIFICATION_WINDOW_MS);
        ctx.store()
            .notifications(
                &p.mesh.id,
                &p.member.id,
                since,
                unread_only,
                NOTIFICATION_PAGE,
            )
            .await
            .map_err(unavailable)
    }
    .await;
    counted(ctx, result)
}

/// REST `POST /notifications/read`: marks the caller's unread notifications (by
/// notification or message id, 1–200 ids; or all, optionally only those created before a
/// time) read now. Returns (rows changed, `readAt`).
pub async fn mark_notifications_read(
    ctx: &ServiceCtx,
    p: &Principal,
    which: MarkWhich,
) -> Result<(u64, i64), TopicError> {
    let result = async {
        if let MarkWhich::Ids(ids) = &which
            && (ids.is_empty() || ids.len() > 200)
        {
            return Err(TopicError::Invalid("ids must hold 1-200 ids".into()));
        }
        let now = now_ms();
        let n = ctx
            .store()
            .notifications_mark_read(&p.mesh.id, &p.member.id, which, now)
            .await
            .map_err(unavailable)?;
        Ok((n, now))
    }
    .await;
    counted(ctx, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_read_from_v1_bodies() {
        let body = STANDARD.encode("hi @Bob and @carol-2, @bob again; mail a@b");
        assert_eq!(body_mentions(&body), vec!["bob", "carol-2", "b"]);
        assert!(body_mentions("not base64!").is_empty());
        let many: String = (0..40).map(|i| format!("@n{i} ")).collect();
        assert_eq!(body_mentions(&STANDARD.encode(many)).len(), MAX_MENTIONS);
        assert_eq!(
            explicit_mentions(&["@Bob".into(), "bob".into(), String::new()]),
            vec!["bob"]
        );
    }

    #[test]
    fn topic_ids_are_what_the_cli_sends_as_ids() {
        let id = new_topic_id();
        assert!(looks_like_id(&id));
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        assert!(!looks_like_id("general"));
    }

    #[test]
    fn a_sealed_copy_opens_with_the_members_secret_key() {
        let seed: [u8; 32] = rand::random();
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        let pubkey = hex::encode(signing.verifying_key().as_bytes());
        let key: [u8; 32] = rand::random();
        let (blob, nonce, sender) = seal_for(&key, &pubkey).expect("sealed");
        let blob = STANDARD.decode(blob).expect("base64");
        assert_eq!(hex::encode(&blob[..32]), sender);
        let sender = crypto_box::PublicKey::from_slice(&blob[..32]).expect("key");
        let mine = crypto_box::SecretKey::from_bytes(signing.to_scalar_bytes());
        let nonce: [u8; 24] = STANDARD
            .decode(nonce)
            .expect("base64")
            .try_into()
            .expect("24 bytes");
        let opened = crypto_box::SalsaBox::new(&sender, &mine)
            .decrypt(&crypto_box::Nonce::from(nonce), &blob[32..])
            .expect("opens");
        assert_eq!(opened, key);
    }
}
