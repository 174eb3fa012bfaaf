//! Memories (extensions §2): shared notes with full-text search.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/memories.rs`. Contract suite: `tests/store_contract.rs`.
//!
//! # Guarantees every backend gives
//!
//! - **Search:** [`MemoriesStore::recall`] finds the mesh's memories that are not
//!   forgotten and whose content contains every (non stop-word) term of the query, best
//!   first, at most `limit`. PostgreSQL ranks `to_tsvector('english', content) @@
//!   plainto_tsquery('english', query)` by `ts_rank` (so it also stems: "deploys" finds
//!   "deploy"); the memory backend approximates with case-insensitive whole-token matching
//!   and ranks by how often the terms occur. Tags are stored, not searched. A query of stop
//!   words only finds nothing.
//! - **Soft delete:** [`MemoriesStore::forget`] sets `forgotten_at`; a forgotten memory is
//!   never found again and cannot be forgotten twice.
//! - **Bounded:** a mesh holds at most `max_per_mesh` memories that are not forgotten;
//!   beyond it [`MemoriesStore::remember`] stores nothing, exactly, also under concurrent
//!   writers.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::StoreResult;
use super::memory::MemoryStore;

/// One memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    pub id: String,
    pub mesh_id: String,
    pub content: String,
    pub tags: Vec<String>,
    /// The author's member id.
    pub member_id: String,
    /// The author member's display name when it was stored.
    pub member_name: String,
    /// ms epoch.
    pub created_at: i64,
}

/// Who may forget a memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgetter<'a> {
    /// Only a memory this member wrote.
    Author(&'a str),
    /// Any memory of the mesh (an admin).
    Anyone,
}

/// Memories (extensions §2): shared notes with full-text search.
#[async_trait]
pub trait MemoriesStore: Send + Sync + 'static {
    /// Stores a memory; `false` (nothing stored) when the mesh already holds
    /// `max_per_mesh` memories that are not forgotten (0: no bound).
    async fn remember(&self, memory: Memory, max_per_mesh: usize) -> StoreResult<bool>;

    /// How many memories of the mesh are not forgotten (`mesh_info.memoryCount`).
    async fn memory_count(&self, mesh_id: &str) -> StoreResult<u64>;

    /// The best matches of `query` (see the module's guarantees).
    async fn recall(&self, mesh_id: &str, query: &str, limit: usize) -> StoreResult<Vec<Memory>>;

    /// Forgets one memory of the mesh if `by` may; `true` when it was forgotten now.
    async fn forget(
        &self,
        mesh_id: &str,
        memory_id: &str,
        by: Forgetter<'_>,
        now_ms: i64,
    ) -> StoreResult<bool>;
}

/// English stop words of PostgreSQL's `english` dictionary that the memory backend drops
/// from queries too, so that a stop-word-only query finds nothing on both backends.
const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "did",
    "do",
    "does",
    "doing",
    "don",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "s",
    "same",
    "she",
    "should",
    "so",
    "some",
    "such",
    "t",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

/// Lower-cased alphanumeric tokens of `text`.
fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
}

/// What the in-memory backend keeps for this family: mesh id → the memories not
/// forgotten, in insertion order (a forgotten one is dropped: nothing can read it again, and
/// dev mode then holds at most `max_per_mesh` per mesh).
#[derive(Debug, Default)]
pub struct MemoryState {
    meshes: Mutex<HashMap<String, Vec<Memory>>>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Memory>>> {
        // Plain data: a panic elsewhere leaves it consistent, so recover the guard.
        self.meshes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything of a deleted mesh (`MemoryStore::delete_mesh`, as the PostgreSQL
    /// delete removes every row with its `mesh_id`).
    pub(super) fn forget_mesh(&self, mesh_id: &str) {
        self.lock().remove(mesh_id);
    }
}

#[async_trait]
impl MemoriesStore for MemoryStore {
    async fn remember(&self, memory: Memory, max_per_mesh: usize) -> StoreResult<bool> {
        let mut meshes = self.memories.lock();
        let rows = meshes.entry(memory.mesh_id.clone()).or_default();
        if max_per_mesh > 0 && rows.len() >= max_per_mesh {
            return Ok(false);
        }
        rows.push(memory);
        Ok(true)
    }

    async fn memory_count(&self, mesh_id: &str) -> StoreResult<u64> {
        Ok(self
            .memories
            .lock()
            .get(mesh_id)
            .map_or(0, |rows| rows.len() as u64))
    }

    async fn recall(&self, mesh_id: &str, query: &str, limit: usize) -> StoreResult<Vec<Memory>> {
        let terms: Vec<String> = tokens(query)
            .filter(|t| !STOP_WORDS.contains(&t.as_str()))
            .collect();
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let meshes = self.memories.lock();
        let mut found: Vec<(usize, &Memory)> = meshes
            .get(mesh_id)
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let words: Vec<String> = tokens(&m.content).collect();
                let mut hits = 0;
                for term in &terms {
                    let n = words.iter().filter(|w| *w == term).count();
                    if n == 0 {
                        return None;
                    }
                    hits += n;
                }
                Some((hits, m))
            })
            .collect();
        // Best first; among equals the newest.
        found.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then(b.1.created_at.cmp(&a.1.created_at))
                .then(b.1.id.cmp(&a.1.id))
        });
        Ok(found
            .into_iter()
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect())
    }

    async fn forget(
        &self,
        mesh_id: &str,
        memory_id: &str,
        by: Forgetter<'_>,
        _now_ms: i64,
    ) -> StoreResult<bool> {
        let mut meshes = self.memories.lock();
        let Some(rows) = meshes.get_mut(mesh_id) else {
            return Ok(false);
        };
        let at = rows.iter().position(|m| {
            m.id == memory_id
                && match by {
                    Forgetter::Author(member) => m.member_id == member,
                    Forgetter::Anyone => true,
                }
        });
        match at {
            Some(i) => {
                rows.remove(i);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
