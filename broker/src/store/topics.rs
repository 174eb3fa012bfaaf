//! The durable state of topics (extensions §9, rest.md §4): topics, their members (role and
//! read mark), sealed copies of topic keys, the history and mention notifications.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/topics.rs`. Contract suite: `tests/store_contract.rs`.
//!
//! # Guarantees every backend gives
//!
//! - **One live name:** at most one non-archived topic per (mesh, name); a concurrent
//!   create of the same name returns the existing topic.
//! - **Bounded, exactly:** a create beyond `max_topics` per mesh and a join beyond
//!   `max_members` per topic are refused, also under concurrent writers.
//! - **History order:** newest first by (`created_at`, insertion order); `before_id` pages
//!   strictly older messages, so two messages of one millisecond are never lost.
//! - **Replies stay in their topic:** a `reply_to_id` naming no message of the same topic
//!   is dropped at insertion.
//! - **A key is claimed once:** `topic_claim_key` sets the topic's key marker only if it is
//!   still empty.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::StoreResult;
use super::memory::MemoryStore;

/// The topic every new member of a mesh joins (**Ours**, extensions §9).
pub const GENERAL: &str = "general";

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub id: String,
    pub mesh_id: String,
    pub name: String,
    pub description: Option<String>,
    /// `public`, `private` or `dm`.
    pub visibility: String,
    pub created_by_member_id: Option<String>,
    /// Hex x25519 public key that sealed the topic key; `None`: unencrypted (v1 only).
    pub encrypted_key_pubkey: Option<String>,
    /// ms epoch.
    pub created_at: i64,
    pub archived_at: Option<i64>,
}

/// A topic with its member count, as `topic_list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicListing {
    pub topic: Topic,
    pub member_count: u64,
}

/// One membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMember {
    pub topic_id: String,
    pub member_id: String,
    /// `lead`, `member` or `observer`.
    pub role: String,
    pub joined_at: i64,
    pub last_read_at: Option<i64>,
}

/// One member's sealed copy of a topic key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKey {
    pub topic_id: String,
    pub member_id: String,
    /// Base64 of sender x25519 public key ‖ `crypto_box_easy(key)`.
    pub encrypted_key: String,
    /// Base64 of the 24-byte nonce.
    pub nonce: String,
    pub sealed_at: i64,
}

/// One stored post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMessage {
    pub id: String,
    pub topic_id: String,
    pub mesh_id: String,
    pub sender_member_id: String,
    pub sender_member_pubkey: String,
    /// The sender's session key, when it posted through a session.
    pub sender_session_pubkey: Option<String>,
    /// The sender's display name at the time of the post.
    pub sender_name: String,
    pub nonce: String,
    pub ciphertext: String,
    /// 1: base64 of UTF-8 text; 2: `crypto_secretbox` under the topic key.
    pub body_version: u8,
    pub reply_to_id: Option<String>,
    /// The id of the post's delivery record (`ack.messageId`, REST `queueId`).
    pub queue_id: String,
    pub created_at: i64,
}

/// One mention notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub id: String,
    pub mesh_id: String,
    pub topic_id: String,
    pub message_id: String,
    pub recipient_member_id: String,
    pub sender_member_id: String,
    /// `mention`.
    pub kind: String,
    pub read_at: Option<i64>,
    /// The message's time.
    pub created_at: i64,
}

/// A notification with its message and topic name, as the notification lists show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationView {
    pub notification: Notification,
    pub topic_name: String,
    pub message: TopicMessage,
}

/// What `topic_create` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new topic; the creator is its `lead` and holds `creator_key` if one was given.
    New(Topic),
    /// A non-archived topic of that name already exists (nothing changed).
    Existing(Topic),
    /// The mesh already holds `max_topics` topics.
    TooMany,
}

/// What a join did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    New,
    /// Already a member: the membership is unchanged.
    Already,
    /// The topic already has `max_members` members.
    Full,
}

/// What `topic_seal` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealed {
    Stored,
    /// A copy exists and `overwrite` was false: nothing changed.
    AlreadySealed,
}

/// Which unread notifications `notifications_mark_read` marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkWhich {
    /// Notification ids or message ids.
    Ids(Vec<String>),
    /// Every one created before this time (ms epoch), or all without one.
    All { before: Option<i64> },
}

/// Topics (extensions §9).
#[async_trait]
pub trait TopicStore: Send + Sync + 'static {
    /// Creates `topic` unless a non-archived topic of its name exists in its mesh, adding
    /// its creator (`created_by_member_id`) as `lead` and storing `creator_key`. `max_topics`
    /// counts the mesh's non-archived topics; 0: no bound.
    async fn topic_create(
        &self,
        topic: Topic,
        creator_key: Option<SealedKey>,
        max_topics: usize,
    ) -> StoreResult<Created>;

    /// The mesh's non-archived topics by name (bytewise), with member counts, at most `limit`.
    async fn topic_list(&self, mesh_id: &str, limit: usize) -> StoreResult<Vec<TopicListing>>;

    /// The topic of the mesh with this id (archived ones included).
    async fn topic_by_id(&self, mesh_id: &str, id: &str) -> StoreResult<Option<Topic>>;

    /// The mesh's non-archived topic of this name.
    async fn topic_by_name(&self, mesh_id: &str, name: &str) -> StoreResult<Option<Topic>>;

    /// Adds the member with `role`; an existing membership is unchanged. `max_members` 0:
    /// no bound.
    async fn topic_join(
        &self,
        topic_id: &str,
        member_id: &str,
        role: &str,
        at: i64,
        max_members: usize,
    ) -> StoreResult<Joined>;

    /// Removes the membership (and the member's sealed copy); whether it existed.
    async fn topic_leave(&self, topic_id: &str, member_id: &str) -> StoreResult<bool>;

    /// The topic's memberships, in join order.
    async fn topic_members(&self, topic_id: &str) -> StoreResult<Vec<TopicMember>>;

    /// One membership.
    async fn topic_member(
        &self,
        topic_id: &str,
        member_id: &str,
    ) -> StoreResult<Option<TopicMember>>;

    /// Sets the member's `last_read_at`. With `join`, a non-member becomes a `member`
    /// first (within `max_members`); without, a non-member is left alone. Whether a mark
    /// was set.
    async fn topic_mark_read(
        &self,
        topic_id: &str,
        member_id: &str,
        at: i64,
        join: bool,
        max_members: usize,
    ) -> StoreResult<bool>;

    /// Stores a post and its notifications (each naming the message). A `reply_to_id`
    /// that is no message of the same topic is dropped; the stored message is returned.
    async fn topic_post(
        &self,
        message: TopicMessage,
        notifications: Vec<Notification>,
    ) -> StoreResult<TopicMessage>;

    /// The topic's messages, newest first, at most `limit`, strictly older than
    /// `before_id` when that is a message of the topic.
    async fn topic_history(
        &self,
        topic_id: &str,
        before_id: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<TopicMessage>>;

    /// The topic's messages newer than a cursor, **oldest first**, at most `limit`: strictly
    /// after `after_id` (by `created_at`, then insertion order) when that is a message of
    /// the topic, else those created after `created_after` (ms epoch). For streams that
    /// resume (`Last-Event-ID`) or poll without losing messages of one millisecond.
    async fn topic_messages_after(
        &self,
        topic_id: &str,
        after_id: Option<&str>,
        created_after: i64,
        limit: usize,
    ) -> StoreResult<Vec<TopicMessage>>;

    /// Per topic of the mesh: messages by others newer than the member's `last_read_at`
    /// (all of them if it never read or is no member). Topics with none are left out.
    async fn topic_unread_counts(
        &self,
        mesh_id: &str,
        member_id: &str,
    ) -> StoreResult<HashMap<String, u64>>;

    /// The member's sealed copy of the topic key.
    async fn topic_key(&self, topic_id: &str, member_id: &str) -> StoreResult<Option<SealedKey>>;

    /// Makes an unencrypted topic keyed: sets its key marker to `pubkey` only if it is
    /// still empty, and then stores `key`. `false`: the topic already had a key.
    async fn topic_claim_key(&self, pubkey: &str, key: SealedKey) -> StoreResult<bool>;

    /// Members of the topic with no sealed copy, in join order, at most `limit`.
    async fn topic_unsealed_members(
        &self,
        topic_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<TopicMember>>;

    /// Stores a member's sealed copy; an existing one is replaced only with `overwrite`.
    async fn topic_seal(&self, key: SealedKey, overwrite: bool) -> StoreResult<Sealed>;

    /// The member's notifications in the mesh created after `since` (ms epoch), newest
    /// first, unread only with `unread_only`, at most `limit`.
    async fn notifications(
        &self,
        mesh_id: &str,
        member_id: &str,
        since: i64,
        unread_only: bool,
        limit: usize,
    ) -> StoreResult<Vec<NotificationView>>;

    /// Marks the member's unread notifications in the mesh read at `at`; how many changed.
    async fn notifications_mark_read(
        &self,
        mesh_id: &str,
        member_id: &str,
        which: MarkWhich,
        at: i64,
    ) -> StoreResult<u64>;
}

#[derive(Debug, Default)]
struct Inner {
    topics: HashMap<String, Topic>,
    /// topic id → memberships in join order.
    members: HashMap<String, Vec<TopicMember>>,
    /// (topic id, member id) → sealed copy.
    keys: BTreeMap<(String, String), SealedKey>,
    /// topic id → messages in insertion order.
    messages: HashMap<String, Vec<TopicMessage>>,
    notifications: Vec<Notification>,
}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {
    inner: Mutex<Inner>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain data: a panic elsewhere leaves it consistent, so recover the guard.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything of a deleted mesh (`MemoryStore::delete_mesh`, as the PostgreSQL
    /// delete cascades from `meshes`).
    pub(super) fn forget_mesh(&self, mesh_id: &str) {
        let mut inner = self.lock();
        let gone: Vec<String> = inner
            .topics
            .values()
            .filter(|t| t.mesh_id == mesh_id)
            .map(|t| t.id.clone())
            .collect();
        for id in &gone {
            inner.topics.remove(id);
            inner.members.remove(id);
            inner.messages.remove(id);
        }
        inner.keys.retain(|(topic, _), _| !gone.contains(topic));
        inner.notifications.retain(|n| n.mesh_id != mesh_id);
    }

    /// **Ours** (extensions §9): a new member of a mesh joins its `#general` topic (a
    /// non-archived topic named `general`), as the PostgreSQL trigger
    /// `topic_general_on_member` does for every insert into `members`.
    pub(super) fn member_added(&self, member: &super::Member) {
        let mut inner = self.lock();
        let Some(general) = live_by_name(&inner, &member.mesh_id, GENERAL).map(|t| t.id.clone())
        else {
            return;
        };
        join_locked(
            &mut inner,
            &general,
            &member.id,
            "member",
            member.created_at,
            0,
        );
    }

    /// Drops the member's sealed copies (its key changed: `store/web_members.rs`).
    pub(super) fn forget_keys_of(&self, member_id: &str) {
        self.lock()
            .keys
            .retain(|(_, member), _| member != member_id);
    }

    /// Forgets a deleted member's memberships, sealed copies and notifications in the mesh
    /// (`MemoryStore::delete_member`, as the PostgreSQL delete does); its posts stay.
    pub(super) fn forget_member(&self, mesh_id: &str, member_id: &str) {
        let mut inner = self.lock();
        let topics: Vec<String> = inner
            .topics
            .values()
            .filter(|t| t.mesh_id == mesh_id)
            .map(|t| t.id.clone())
            .collect();
        for id in &topics {
            if let Some(members) = inner.members.get_mut(id) {
                members.retain(|m| m.member_id != member_id);
            }
        }
        inner
            .keys
            .retain(|(topic, member), _| member != member_id || !topics.contains(topic));
        inner
            .notifications
            .retain(|n| n.mesh_id != mesh_id || n.recipient_member_id != member_id);
    }
}

fn live_by_name<'a>(inner: &'a Inner, mesh_id: &str, name: &str) -> Option<&'a Topic> {
    inner
        .topics
        .values()
        .find(|t| t.mesh_id == mesh_id && t.name == name && t.archived_at.is_none())
}

fn join_locked(
    inner: &mut Inner,
    topic_id: &str,
    member_id: &str,
    role: &str,
    at: i64,
    max_members: usize,
) -> Joined {
    let members = inner.members.entry(topic_id.to_string()).or_default();
    if members.iter().any(|m| m.member_id == member_id) {
        return Joined::Already;
    }
    if max_members > 0 && members.len() >= max_members {
        return Joined::Full;
    }
    members.push(TopicMember {
        topic_id: topic_id.to_string(),
        member_id: member_id.to_string(),
        role: role.to_string(),
        joined_at: at,
        last_read_at: None,
    });
    Joined::New
}

#[async_trait]
impl TopicStore for MemoryStore {
    async fn topic_create(
        &self,
        topic: Topic,
        creator_key: Option<SealedKey>,
        max_topics: usize,
    ) -> StoreResult<Created> {
        let mut inner = self.topics.lock();
        if let Some(t) = live_by_name(&inner, &topic.mesh_id, &topic.name) {
            return Ok(Created::Existing(t.clone()));
        }
        let live = inner
            .topics
            .values()
            .filter(|t| t.mesh_id == topic.mesh_id && t.archived_at.is_none())
            .count();
        if max_topics > 0 && live >= max_topics {
            return Ok(Created::TooMany);
        }
        inner.topics.insert(topic.id.clone(), topic.clone());
        if let Some(creator) = &topic.created_by_member_id {
            join_locked(&mut inner, &topic.id, creator, "lead", topic.created_at, 0);
        }
        if let Some(k) = creator_key {
            inner
                .keys
                .insert((k.topic_id.clone(), k.member_id.clone()), k);
        }
        Ok(Created::New(topic))
    }

    async fn topic_list(&self, mesh_id: &str, limit: usize) -> StoreResult<Vec<TopicListing>> {
        let inner = self.topics.lock();
        let mut out: Vec<TopicListing> = inner
            .topics
            .values()
            .filter(|t| t.mesh_id == mesh_id && t.archived_at.is_none())
            .map(|t| TopicListing {
                topic: t.clone(),
                member_count: inner.members.get(&t.id).map_or(0, |m| m.len() as u64),
            })
            .collect();
        out.sort_by(|a, b| a.topic.name.as_bytes().cmp(b.topic.name.as_bytes()));
        out.truncate(limit);
        Ok(out)
    }

    async fn topic_by_id(&self, mesh_id: &str, id: &str) -> StoreResult<Option<Topic>> {
        Ok(self
            .topics
            .lock()
            .topics
            .get(id)
            .filter(|t| t.mesh_id == mesh_id)
            .cloned())
    }

    async fn topic_by_name(&self, mesh_id: &str, name: &str) -> StoreResult<Option<Topic>> {
        Ok(live_by_name(&self.topics.lock(), mesh_id, name).cloned())
    }

    async fn topic_join(
        &self,
        topic_id: &str,
        member_id: &str,
        role: &str,
        at: i64,
        max_members: usize,
    ) -> StoreResult<Joined> {
        let mut inner = self.topics.lock();
        Ok(join_locked(
            &mut inner,
            topic_id,
            member_id,
            role,
            at,
            max_members,
        ))
    }

    async fn topic_leave(&self, topic_id: &str, member_id: &str) -> StoreResult<bool> {
        let mut inner = self.topics.lock();
        inner
            .keys
            .remove(&(topic_id.to_string(), member_id.to_string()));
        let Some(members) = inner.members.get_mut(topic_id) else {
            return Ok(false);
        };
        let before = members.len();
        members.retain(|m| m.member_id != member_id);
        Ok(members.len() != before)
    }

    async fn topic_members(&self, topic_id: &str) -> StoreResult<Vec<TopicMember>> {
        Ok(self
            .topics
            .lock()
            .members
            .get(topic_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn topic_member(
        &self,
        topic_id: &str,
        member_id: &str,
    ) -> StoreResult<Option<TopicMember>> {
        Ok(self
            .topics
            .lock()
            .members
            .get(topic_id)
            .and_then(|ms| ms.iter().find(|m| m.member_id == member_id).cloned()))
    }

    async fn topic_mark_read(
        &self,
        topic_id: &str,
        member_id: &str,
        at: i64,
        join: bool,
        max_members: usize,
    ) -> StoreResult<bool> {
        let mut inner = self.topics.lock();
        if join
            && join_locked(&mut inner, topic_id, member_id, "member", at, max_members)
                == Joined::Full
        {
            return Ok(false);
        }
        let Some(m) = inner
            .members
            .get_mut(topic_id)
            .and_then(|ms| ms.iter_mut().find(|m| m.member_id == member_id))
        else {
            return Ok(false);
        };
        m.last_read_at = Some(at);
        Ok(true)
    }

    async fn topic_post(
        &self,
        mut message: TopicMessage,
        notifications: Vec<Notification>,
    ) -> StoreResult<TopicMessage> {
        let mut inner = self.topics.lock();
        let messages = inner.messages.entry(message.topic_id.clone()).or_default();
        if let Some(r) = &message.reply_to_id
            && !messages.iter().any(|m| &m.id == r)
        {
            message.reply_to_id = None;
        }
        messages.push(message.clone());
        inner.notifications.extend(notifications);
        Ok(message)
    }

    async fn topic_history(
        &self,
        topic_id: &str,
        before_id: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<TopicMessage>> {
        let inner = self.topics.lock();
        let Some(messages) = inner.messages.get(topic_id) else {
            return Ok(Vec::new());
        };
        // Insertion order is (created_at, seq) order for equal times; sort by time with
        // insertion order breaking ties, then page.
        let mut ordered: Vec<(usize, &TopicMessage)> = messages.iter().enumerate().collect();
        ordered.sort_by_key(|(i, m)| std::cmp::Reverse((m.created_at, *i)));
        let cursor = before_id.and_then(|id| {
            ordered
                .iter()
                .find(|(_, m)| m.id == id)
                .map(|(i, m)| (m.created_at, *i))
        });
        Ok(ordered
            .into_iter()
            .filter(|(i, m)| cursor.is_none_or(|c| (m.created_at, *i) < c))
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect())
    }

    async fn topic_messages_after(
        &self,
        topic_id: &str,
        after_id: Option<&str>,
        created_after: i64,
        limit: usize,
    ) -> StoreResult<Vec<TopicMessage>> {
        let inner = self.topics.lock();
        let Some(messages) = inner.messages.get(topic_id) else {
            return Ok(Vec::new());
        };
        let mut ordered: Vec<(usize, &TopicMessage)> = messages.iter().enumerate().collect();
        ordered.sort_by_key(|(i, m)| (m.created_at, *i));
        let cursor = after_id.and_then(|id| {
            ordered
                .iter()
                .find(|(_, m)| m.id == id)
                .map(|(i, m)| (m.created_at, *i))
        });
        Ok(ordered
            .into_iter()
            .filter(|(i, m)| match cursor {
                Some(c) => (m.created_at, *i) > c,
                None => m.created_at > created_after,
            })
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect())
    }

    async fn topic_unread_counts(
        &self,
        mesh_id: &str,
        member_id: &str,
    ) -> StoreResult<HashMap<String, u64>> {
        let inner = self.topics.lock();
        let mut out = HashMap::new();
        for t in inner.topics.values().filter(|t| t.mesh_id == mesh_id) {
            let read = inner
                .members
                .get(&t.id)
                .and_then(|ms| ms.iter().find(|m| m.member_id == member_id))
                .and_then(|m| m.last_read_at);
            let n = inner.messages.get(&t.id).map_or(0, |ms| {
                ms.iter()
                    .filter(|m| {
                        m.sender_member_id != member_id && read.is_none_or(|r| m.created_at > r)
                    })
                    .count() as u64
            });
            if n > 0 {
                out.insert(t.id.clone(), n);
            }
        }
        Ok(out)
    }

    async fn topic_key(&self, topic_id: &str, member_id: &str) -> StoreResult<Option<SealedKey>> {
        Ok(self
            .topics
            .lock()
            .keys
            .get(&(topic_id.to_string(), member_id.to_string()))
            .cloned())
    }

    async fn topic_claim_key(&self, pubkey: &str, key: SealedKey) -> StoreResult<bool> {
        let mut inner = self.topics.lock();
        let Some(t) = inner.topics.get_mut(&key.topic_id) else {
            return Ok(false);
        };
        if t.encrypted_key_pubkey.is_some() {
            return Ok(false);
        }
        t.encrypted_key_pubkey = Some(pubkey.to_string());
        inner
            .keys
            .insert((key.topic_id.clone(), key.member_id.clone()), key);
        Ok(true)
    }

    async fn topic_unsealed_members(
        &self,
        topic_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<TopicMember>> {
        let inner = self.topics.lock();
        Ok(inner
            .members
            .get(topic_id)
            .map(|ms| {
                ms.iter()
                    .filter(|m| {
                        !inner
                            .keys
                            .contains_key(&(topic_id.to_string(), m.member_id.clone()))
                    })
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn topic_seal(&self, key: SealedKey, overwrite: bool) -> StoreResult<Sealed> {
        let mut inner = self.topics.lock();
        let k = (key.topic_id.clone(), key.member_id.clone());
        if !overwrite && inner.keys.contains_key(&k) {
            return Ok(Sealed::AlreadySealed);
        }
        inner.keys.insert(k, key);
        Ok(Sealed::Stored)
    }

    async fn notifications(
        &self,
        mesh_id: &str,
        member_id: &str,
        since: i64,
        unread_only: bool,
        limit: usize,
    ) -> StoreResult<Vec<NotificationView>> {
        let inner = self.topics.lock();
        // Insertion order breaks ties of one millisecond (as `seq` does in PostgreSQL).
        let mut out: Vec<(usize, NotificationView)> = inner
            .notifications
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.mesh_id == mesh_id
                    && n.recipient_member_id == member_id
                    && n.created_at > since
                    && (!unread_only || n.read_at.is_none())
            })
            .filter_map(|(i, n)| {
                let topic = inner.topics.get(&n.topic_id)?;
                let message = inner
                    .messages
                    .get(&n.topic_id)?
                    .iter()
                    .find(|m| m.id == n.message_id)?;
                Some((
                    i,
                    NotificationView {
                        notification: n.clone(),
                        topic_name: topic.name.clone(),
                        message: message.clone(),
                    },
                ))
            })
            .collect();
        out.sort_by_key(|(i, v)| std::cmp::Reverse((v.message.created_at, *i)));
        out.truncate(limit);
        Ok(out.into_iter().map(|(_, v)| v).collect())
    }

    async fn notifications_mark_read(
        &self,
        mesh_id: &str,
        member_id: &str,
        which: MarkWhich,
        at: i64,
    ) -> StoreResult<u64> {
        let mut inner = self.topics.lock();
        let mut n = 0;
        for row in inner.notifications.iter_mut().filter(|r| {
            r.mesh_id == mesh_id && r.recipient_member_id == member_id && r.read_at.is_none()
        }) {
            let hit = match &which {
                MarkWhich::Ids(ids) => ids.contains(&row.id) || ids.contains(&row.message_id),
                MarkWhich::All { before } => before.is_none_or(|b| row.created_at < b),
            };
            if hit {
                row.read_at = Some(at);
                n += 1;
            }
        }
        Ok(n)
    }
}
