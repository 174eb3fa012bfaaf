//! The operations of memory (extensions §2): `remember`, `recall`, `forget`, without a
//! transport. Memories live in the store only (no bus): a memory stored through one replica
//! is recalled through any other at once.
//!
//! Authorisation: any member (not revoked) may remember and recall. **Ours:** `forget`
//! changes something only for the memory's author or an admin (the mesh owner or a member
//! with role `admin`); anyone else gets the same `ack` and nothing changes, since the CLI
//! cannot show a refusal.

use super::{Principal, ServiceCtx};
use crate::ids::{self, now_ms};
use crate::protocol::ext;
use crate::store::memories::{Forgetter, Memory};
use crate::store::{Member, Role, StoreError};

/// Most memories one `recall` answers (the reference's bound).
pub const RECALL_LIMIT: usize = 20;

/// Why a memory operation was refused. [`MemoryError::code`] and [`MemoryError::message`]
/// are the `error` frame's; [`MemoryError::metric_label`] the `reason` of
/// `broker_memory_requests_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryError {
    /// `remember` without content (or only whitespace).
    ContentMissing,
    /// Content over `MAX_MEMORY_CONTENT_BYTES`.
    ContentTooLarge { max: usize },
    /// More than `MAX_MEMORY_TAGS` tags.
    TooManyTags { max: usize },
    /// A tag over `MAX_MEMORY_TAG_BYTES`.
    TagTooLong { max: usize },
    /// The mesh holds `MAX_MEMORIES_PER_MESH` memories that are not forgotten.
    TooManyMemories { max: usize },
    /// A `recall` query over `MAX_RECALL_QUERY_BYTES`.
    QueryTooLong { max: usize },
    /// The caller's member row is revoked (banned) or gone.
    Revoked { mesh_name: String },
    /// A backend failed; nothing was done.
    Unavailable(String),
}

impl MemoryError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            MemoryError::ContentMissing => "invalid",
            MemoryError::ContentTooLarge { .. } => "content_too_large",
            MemoryError::TooManyTags { .. } => "too_many_tags",
            MemoryError::TagTooLong { .. } => "tag_too_long",
            MemoryError::TooManyMemories { .. } => "too_many_memories",
            MemoryError::QueryTooLong { .. } => "query_too_long",
            MemoryError::Revoked { .. } => "revoked",
            MemoryError::Unavailable(_) => "store",
        }
    }

    /// The `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            MemoryError::ContentMissing => "invalid",
            MemoryError::ContentTooLarge { .. } => "content_too_large",
            MemoryError::TooManyTags { .. } => "too_many_tags",
            MemoryError::TagTooLong { .. } => "tag_too_long",
            MemoryError::TooManyMemories { .. } => "too_many_memories",
            MemoryError::QueryTooLong { .. } => "query_too_long",
            MemoryError::Revoked { .. } => "forbidden",
            MemoryError::Unavailable(_) => "internal",
        }
    }

    /// The exact wire text.
    pub fn message(&self) -> String {
        match self {
            MemoryError::ContentMissing => "remember needs non-empty content".into(),
            MemoryError::ContentTooLarge { max } => {
                format!("memory content is larger than {max} bytes")
            }
            MemoryError::TooManyTags { max } => format!("a memory has at most {max} tags"),
            MemoryError::TagTooLong { max } => format!("a memory tag is longer than {max} bytes"),
            MemoryError::TooManyMemories { max } => {
                format!("this mesh already holds {max} memories; forget some first")
            }
            MemoryError::QueryTooLong { max } => {
                format!("a recall query is longer than {max} bytes")
            }
            MemoryError::Revoked { mesh_name } => {
                format!("You've been removed from {mesh_name:?}. Contact the mesh owner to rejoin.")
            }
            MemoryError::Unavailable(e) => format!("memory unavailable: {e}"),
        }
    }
}

impl std::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for MemoryError {}

fn unavailable(e: StoreError) -> MemoryError {
    MemoryError::Unavailable(e.to_string())
}

/// A memory as replies show it.
pub fn row(m: &Memory) -> ext::memories::MemoryRow {
    ext::memories::MemoryRow {
        id: m.id.clone(),
        content: m.content.clone(),
        tags: m.tags.clone(),
        remembered_by: if m.member_name.is_empty() {
            "unknown".into()
        } else {
            m.member_name.clone()
        },
        remembered_at: ids::iso8601_ms(m.created_at),
    }
}

/// Counts a refusal.
fn counted<T>(ctx: &ServiceCtx, result: Result<T, MemoryError>) -> Result<T, MemoryError> {
    if let Err(e) = &result {
        ctx.metrics().refuse_memory(e.metric_label());
    }
    result
}

/// The caller's member row as the member cache has it (dropped cluster-wide on a ban).
async fn current_member(ctx: &ServiceCtx, p: &Principal) -> Result<Member, MemoryError> {
    let members = ctx.members(&p.mesh.id).await.map_err(unavailable)?;
    members
        .iter()
        .find(|m| m.id == p.member.id && m.revoked_at.is_none())
        .cloned()
        .ok_or_else(|| MemoryError::Revoked {
            mesh_name: p.mesh.name.clone(),
        })
}

/// `remember`: stores a memory attributed to the caller's member; returns its id.
pub async fn remember(
    ctx: &ServiceCtx,
    p: &Principal,
    content: String,
    tags: Vec<String>,
) -> Result<String, MemoryError> {
    counted(ctx, remember_inner(ctx, p, content, tags).await)
}

async fn remember_inner(
    ctx: &ServiceCtx,
    p: &Principal,
    content: String,
    tags: Vec<String>,
) -> Result<String, MemoryError> {
    let config = ctx.config();
    if content.trim().is_empty() {
        return Err(MemoryError::ContentMissing);
    }
    if content.len() > config.max_memory_content_bytes {
        return Err(MemoryError::ContentTooLarge {
            max: config.max_memory_content_bytes,
        });
    }
    if tags.len() > config.max_memory_tags {
        return Err(MemoryError::TooManyTags {
            max: config.max_memory_tags,
        });
    }
    if tags.iter().any(|t| t.len() > config.max_memory_tag_bytes) {
        return Err(MemoryError::TagTooLong {
            max: config.max_memory_tag_bytes,
        });
    }
    let member = current_member(ctx, p).await?;
    let memory = Memory {
        id: ids::random_id(32),
        mesh_id: p.mesh.id.clone(),
        content,
        tags,
        member_id: member.id,
        member_name: member.display_name,
        created_at: now_ms(),
    };
    let id = memory.id.clone();
    let stored = ctx
        .store()
        .remember(memory, config.max_memories_per_mesh)
        .await
        .map_err(unavailable)?;
    if !stored {
        return Err(MemoryError::TooManyMemories {
            max: config.max_memories_per_mesh,
        });
    }
    Ok(id)
}

/// `recall`: the best [`RECALL_LIMIT`] matches of `query` among the mesh's memories.
pub async fn recall(
    ctx: &ServiceCtx,
    p: &Principal,
    query: &str,
) -> Result<Vec<Memory>, MemoryError> {
    let max = ctx.config().max_recall_query_bytes;
    if query.len() > max {
        return counted(ctx, Err(MemoryError::QueryTooLong { max }));
    }
    if query.trim().is_empty() {
        return Ok(Vec::new());
    }
    counted(
        ctx,
        ctx.store()
            .recall(&p.mesh.id, query, RECALL_LIMIT)
            .await
            .map_err(unavailable),
    )
}

/// `forget`: forgets the memory if the caller wrote it or is an admin. `Ok(false)` when
/// nothing changed (unknown id, not allowed, already forgotten); the caller answers the
/// same either way.
pub async fn forget(ctx: &ServiceCtx, p: &Principal, memory_id: &str) -> Result<bool, MemoryError> {
    if memory_id.is_empty() {
        return Ok(false);
    }
    let result = async {
        let member = current_member(ctx, p).await?;
        let admin = member.role == Role::Admin
            || (p.mesh.owner_user_id.is_some() && member.user_id == p.mesh.owner_user_id);
        let by = if admin {
            Forgetter::Anyone
        } else {
            Forgetter::Author(&member.id)
        };
        ctx.store()
            .forget(&p.mesh.id, memory_id, by, now_ms())
            .await
            .map_err(unavailable)
    }
    .await;
    counted(ctx, result)
}
