//! The operations of skills (extensions §12): `share_skill`, `get_skill`, `list_skills`,
//! `remove_skill`, without a transport. Skills live in the store only (no bus).
//!
//! Authorisation (**Ours**): any member (not revoked) may share a new name and read every
//! skill; only the skill's author (the member that last shared it) or an admin (the mesh
//! owner or a member with role `admin`) replaces or removes it. Anyone else gets
//! `error{code:"forbidden"}` on a replace and `skill_ack{action:"not_found"}` on a remove,
//! and nothing changes.

use serde_json::value::RawValue;

use super::{Principal, ServiceCtx};
use crate::ids::{self, now_ms};
use crate::protocol::ext;
use crate::store::skills::{ShareSkill, Skill, SkillActor};
use crate::store::{Member, Role, StoreError};

/// Why a skill operation was refused. [`SkillError::code`] and [`SkillError::message`]
/// are the `error` frame's; [`SkillError::metric_label`] the `reason` of
/// `broker_skill_requests_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkillError {
    /// `share_skill` without a name or instructions.
    Missing { what: &'static str },
    /// A field over its bound (`what` names it and the setting).
    FieldTooLarge { what: &'static str, max: usize },
    /// A new name in a mesh that holds `MAX_SKILLS_PER_MESH` skills.
    TooManySkills { max: usize },
    /// A replace of a skill the caller neither wrote nor administers.
    Forbidden { name: String },
    /// The caller's member row is revoked (banned) or gone.
    Revoked { mesh_name: String },
    /// A backend failed; nothing was done.
    Unavailable(String),
}

impl SkillError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            SkillError::Missing { .. } => "invalid",
            SkillError::FieldTooLarge { .. } => "field_too_large",
            SkillError::TooManySkills { .. } => "too_many_skills",
            SkillError::Forbidden { .. } => "forbidden",
            SkillError::Revoked { .. } => "revoked",
            SkillError::Unavailable(_) => "store",
        }
    }

    /// The `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            SkillError::Missing { .. } => "invalid",
            SkillError::FieldTooLarge { .. } => "field_too_large",
            SkillError::TooManySkills { .. } => "too_many_skills",
            SkillError::Forbidden { .. } | SkillError::Revoked { .. } => "forbidden",
            SkillError::Unavailable(_) => "internal",
        }
    }

    /// The exact wire text.
    pub fn message(&self) -> String {
        match self {
            SkillError::Missing { what } => format!("share_skill needs a non-empty {what}"),
            SkillError::FieldTooLarge { what, max } => format!("{what} is over {max}"),
            SkillError::TooManySkills { max } => {
                format!(
                    "this mesh already holds {max} skills; remove one or replace an existing name"
                )
            }
            SkillError::Forbidden { name } => format!(
                "skill {name:?} was shared by another member; only its author or an admin can replace it"
            ),
            SkillError::Revoked { mesh_name } => {
                format!("You've been removed from {mesh_name:?}. Contact the mesh owner to rejoin.")
            }
            SkillError::Unavailable(e) => format!("skills unavailable: {e}"),
        }
    }
}

impl std::fmt::Display for SkillError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for SkillError {}

fn unavailable(e: StoreError) -> SkillError {
    SkillError::Unavailable(e.to_string())
}

/// Counts a refusal.
fn counted<T>(ctx: &ServiceCtx, result: Result<T, SkillError>) -> Result<T, SkillError> {
    if let Err(e) = &result {
        ctx.metrics().refuse_skill(e.metric_label());
    }
    result
}

fn author(s: &Skill) -> String {
    if s.author_name.is_empty() {
        "unknown".into()
    } else {
        s.author_name.clone()
    }
}

/// A stored skill as `get_skill` shows it. A manifest that is somehow not JSON any more
/// (it was checked when shared) shows as `null`.
pub fn row(s: &Skill) -> ext::skills::SkillRow {
    ext::skills::SkillRow {
        name: s.name.clone(),
        description: s.description.clone(),
        instructions: s.instructions.clone(),
        tags: s.tags.clone(),
        author: author(s),
        manifest: s
            .manifest
            .clone()
            .and_then(|m| RawValue::from_string(m).ok()),
        created_at: ids::iso8601_ms(s.created_at),
    }
}

/// A stored skill as `list_skills` shows it.
pub fn summary_row(s: &Skill) -> ext::skills::SkillSummary {
    ext::skills::SkillSummary {
        name: s.name.clone(),
        description: s.description.clone(),
        tags: s.tags.clone(),
        author: author(s),
        created_at: ids::iso8601_ms(s.created_at),
    }
}

/// The caller's member row as the member cache has it (dropped cluster-wide on a ban).
async fn current_member(ctx: &ServiceCtx, p: &Principal) -> Result<Member, SkillError> {
    let members = ctx.members(&p.mesh.id).await.map_err(unavailable)?;
    members
        .iter()
        .find(|m| m.id == p.member.id && m.revoked_at.is_none())
        .cloned()
        .ok_or_else(|| SkillError::Revoked {
            mesh_name: p.mesh.name.clone(),
        })
}

/// Whether `member` administers the mesh (owner or role `admin`).
fn is_admin(p: &Principal, member: &Member) -> bool {
    member.role == Role::Admin
        || (p.mesh.owner_user_id.is_some() && member.user_id == p.mesh.owner_user_id)
}

fn check(ctx: &ServiceCtx, req: &ext::skills::ShareSkill) -> Result<(), SkillError> {
    let c = ctx.config();
    let too_large = |what, max| Err(SkillError::FieldTooLarge { what, max });
    if req.name.trim().is_empty() {
        return Err(SkillError::Missing { what: "name" });
    }
    if req.instructions.trim().is_empty() {
        return Err(SkillError::Missing {
            what: "instructions",
        });
    }
    if req.name.len() > c.max_skill_name_bytes {
        return too_large("name bytes (MAX_SKILL_NAME_BYTES)", c.max_skill_name_bytes);
    }
    if req.description.len() > c.max_skill_description_bytes {
        return too_large(
            "description bytes (MAX_SKILL_DESCRIPTION_BYTES)",
            c.max_skill_description_bytes,
        );
    }
    if req.instructions.len() > c.max_skill_instructions_bytes {
        return too_large(
            "instructions bytes (MAX_SKILL_INSTRUCTIONS_BYTES)",
            c.max_skill_instructions_bytes,
        );
    }
    if let Some(m) = &req.manifest
        && m.get().len() > c.max_skill_manifest_bytes
    {
        return too_large(
            "manifest bytes (MAX_SKILL_MANIFEST_BYTES)",
            c.max_skill_manifest_bytes,
        );
    }
    let tags = req.tags.as_deref().unwrap_or_default();
    if tags.len() > c.max_skill_tags {
        return too_large("the number of tags (MAX_SKILL_TAGS)", c.max_skill_tags);
    }
    if tags.iter().any(|t| t.len() > c.max_skill_tag_bytes) {
        return too_large("a tag's bytes (MAX_SKILL_TAG_BYTES)", c.max_skill_tag_bytes);
    }
    Ok(())
}

/// `share_skill`: validates and upserts by name, as the caller may (see the module).
pub async fn share(
    ctx: &ServiceCtx,
    p: &Principal,
    req: ext::skills::ShareSkill,
) -> Result<(), SkillError> {
    counted(ctx, share_inner(ctx, p, req).await)
}

async fn share_inner(
    ctx: &ServiceCtx,
    p: &Principal,
    req: ext::skills::ShareSkill,
) -> Result<(), SkillError> {
    check(ctx, &req)?;
    let member = current_member(ctx, p).await?;
    let by = if is_admin(p, &member) {
        SkillActor::Admin
    } else {
        SkillActor::Member(&member.id)
    };
    let now = now_ms();
    let skill = Skill {
        mesh_id: p.mesh.id.clone(),
        name: req.name.clone(),
        description: req.description,
        instructions: req.instructions,
        tags: req.tags.unwrap_or_default(),
        manifest: req.manifest.map(|m| m.get().to_string()),
        author_member_id: member.id.clone(),
        author_name: member.display_name.clone(),
        created_at: now,
        updated_at: now,
    };
    let max = ctx.config().max_skills_per_mesh;
    match ctx
        .store()
        .share_skill(skill, by, max)
        .await
        .map_err(unavailable)?
    {
        ShareSkill::Shared => Ok(()),
        ShareSkill::Forbidden => Err(SkillError::Forbidden { name: req.name }),
        ShareSkill::TooManySkills => Err(SkillError::TooManySkills { max }),
    }
}

/// `get_skill`: the skill of that exact name, or `None`.
pub async fn get(ctx: &ServiceCtx, p: &Principal, name: &str) -> Result<Option<Skill>, SkillError> {
    if name.is_empty() || name.len() > ctx.config().max_skill_name_bytes {
        return Ok(None);
    }
    counted(
        ctx,
        ctx.store()
            .skill(&p.mesh.id, name)
            .await
            .map_err(unavailable),
    )
}

/// `list_skills`: the mesh's skills by name (at most `MAX_SKILLS_PER_MESH`), filtered by
/// `query` (case-insensitive substring of the name, the description or a tag). An empty
/// query lists all; one longer than any stored field could be matches nothing.
pub async fn list(
    ctx: &ServiceCtx,
    p: &Principal,
    query: Option<&str>,
) -> Result<Vec<Skill>, SkillError> {
    let c = ctx.config();
    let query = query.filter(|q| !q.is_empty());
    if let Some(q) = query {
        let longest = c
            .max_skill_name_bytes
            .max(c.max_skill_description_bytes)
            .max(c.max_skill_tag_bytes);
        if q.len() > longest {
            return Ok(Vec::new());
        }
    }
    let limit = match c.max_skills_per_mesh {
        0 => usize::MAX,
        n => n,
    };
    counted(
        ctx,
        ctx.store()
            .list_skills(&p.mesh.id, query, limit)
            .await
            .map_err(unavailable),
    )
}

/// `remove_skill`: removes it if the caller wrote it or is an admin; `Ok(false)` when
/// nothing changed (unknown name or not allowed: the reply is `not_found` either way).
pub async fn remove(ctx: &ServiceCtx, p: &Principal, name: &str) -> Result<bool, SkillError> {
    if name.is_empty() || name.len() > ctx.config().max_skill_name_bytes {
        return Ok(false);
    }
    let result = async {
        let member = current_member(ctx, p).await?;
        let by = if is_admin(p, &member) {
            SkillActor::Admin
        } else {
            SkillActor::Member(&member.id)
        };
        let removed = ctx
            .store()
            .remove_skill(&p.mesh.id, name, by)
            .await
            .map_err(unavailable)?;
        if !removed && matches!(by, SkillActor::Member(_)) {
            // Count a refused remove (the name exists but is not the caller's).
            let exists = ctx
                .store()
                .skill(&p.mesh.id, name)
                .await
                .map_err(unavailable)?
                .is_some();
            if exists {
                ctx.metrics().refuse_skill("forbidden");
            }
        }
        Ok(removed)
    }
    .await;
    counted(ctx, result)
}
