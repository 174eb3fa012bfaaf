//! Skills (extensions §12): named instruction bundles, one per (mesh, name).
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/skills.rs`. Contract suite: `tests/store_contract.rs`.
//!
//! # Guarantees every backend gives
//!
//! - **Upsert by name, guarded:** a share of an existing name replaces it only if the
//!   [`SkillActor`] may (an admin, or the member who wrote it); otherwise nothing changes
//!   ([`ShareSkill::Forbidden`]). A replacement keeps `created_at`.
//! - **The manifest as sent:** `manifest` is the raw JSON text, returned byte for byte.
//! - **Bounded, exactly:** a new name in a mesh holding `max_skills` skills is refused
//!   ([`ShareSkill::TooManySkills`]), also under concurrent writers.
//! - **Ordered by name** (bytewise) in lists.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::StoreResult;
use super::memory::MemoryStore;

/// One stored skill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skill {
    pub mesh_id: String,
    pub name: String,
    pub description: String,
    pub instructions: String,
    pub tags: Vec<String>,
    /// The raw JSON text of `manifest` as the author sent it (`None`: absent or `null`).
    pub manifest: Option<String>,
    /// The member who last shared it.
    pub author_member_id: String,
    /// That member's display name at the time (`author`).
    pub author_name: String,
    /// ms epoch of the first share of this name.
    pub created_at: i64,
    /// ms epoch of the last share.
    pub updated_at: i64,
}

/// Who replaces or removes a skill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkillActor<'a> {
    /// The mesh owner or an admin member: any skill.
    Admin,
    /// Any other member (its id): only skills it wrote.
    Member(&'a str),
}

impl SkillActor<'_> {
    fn may_change(&self, author_member_id: &str) -> bool {
        match self {
            SkillActor::Admin => true,
            SkillActor::Member(id) => *id == author_member_id,
        }
    }
}

/// What a share did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareSkill {
    /// Stored (new, or replacing one the actor may change).
    Shared,
    /// The name exists and the actor may not replace it: nothing changed.
    Forbidden,
    /// The name is new and the mesh already holds `max_skills` skills: nothing changed.
    TooManySkills,
}

/// Skills (extensions §12).
#[async_trait]
pub trait SkillStore: Send + Sync + 'static {
    /// Upserts `skill` by (mesh, name) as `by` (see the module's guarantees). `max_skills`
    /// 0: no bound.
    async fn share_skill(
        &self,
        skill: Skill,
        by: SkillActor<'_>,
        max_skills: usize,
    ) -> StoreResult<ShareSkill>;

    /// One skill by exact name.
    async fn skill(&self, mesh_id: &str, name: &str) -> StoreResult<Option<Skill>>;

    /// The mesh's skills ordered by name, at most `limit`; with a `query`, only those whose
    /// name, description or a tag contains it case-insensitively.
    async fn list_skills(
        &self,
        mesh_id: &str,
        query: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Skill>>;

    /// Removes the skill if it exists and `by` may change it; whether it did.
    async fn remove_skill(
        &self,
        mesh_id: &str,
        name: &str,
        by: SkillActor<'_>,
    ) -> StoreResult<bool>;
}

/// What the in-memory backend keeps for this family: mesh id → name → skill.
#[derive(Debug, Default)]
pub struct MemoryState {
    meshes: Mutex<HashMap<String, BTreeMap<String, Skill>>>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<String, Skill>>> {
        // Plain data: a panic elsewhere leaves it consistent, so recover the guard.
        self.meshes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything of a deleted mesh (`MemoryStore::delete_mesh`, as the PostgreSQL
    /// delete removes every row with its `mesh_id`).
    pub(super) fn forget_mesh(&self, mesh_id: &str) {
        self.lock().remove(mesh_id);
    }
}

/// Whether `skill` matches a `list_skills` query (case-insensitive substring of its name,
/// description or a tag).
pub fn skill_matches(skill: &Skill, query: &str) -> bool {
    let q = query.to_lowercase();
    skill.name.to_lowercase().contains(&q)
        || skill.description.to_lowercase().contains(&q)
        || skill.tags.iter().any(|t| t.to_lowercase().contains(&q))
}

#[async_trait]
impl SkillStore for MemoryStore {
    async fn share_skill(
        &self,
        mut skill: Skill,
        by: SkillActor<'_>,
        max_skills: usize,
    ) -> StoreResult<ShareSkill> {
        let mut meshes = self.skills.lock();
        let names = meshes.entry(skill.mesh_id.clone()).or_default();
        match names.get(&skill.name) {
            Some(old) if !by.may_change(&old.author_member_id) => {
                return Ok(ShareSkill::Forbidden);
            }
            Some(old) => skill.created_at = old.created_at,
            None if max_skills > 0 && names.len() >= max_skills => {
                return Ok(ShareSkill::TooManySkills);
            }
            None => {}
        }
        names.insert(skill.name.clone(), skill);
        Ok(ShareSkill::Shared)
    }

    async fn skill(&self, mesh_id: &str, name: &str) -> StoreResult<Option<Skill>> {
        Ok(self
            .skills
            .lock()
            .get(mesh_id)
            .and_then(|names| names.get(name))
            .cloned())
    }

    async fn list_skills(
        &self,
        mesh_id: &str,
        query: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Skill>> {
        Ok(self
            .skills
            .lock()
            .get(mesh_id)
            .map(|names| {
                names
                    .values()
                    .filter(|s| query.is_none_or(|q| skill_matches(s, q)))
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn remove_skill(
        &self,
        mesh_id: &str,
        name: &str,
        by: SkillActor<'_>,
    ) -> StoreResult<bool> {
        let mut meshes = self.skills.lock();
        let Some(names) = meshes.get_mut(mesh_id) else {
            return Ok(false);
        };
        match names.get(name) {
            Some(s) if by.may_change(&s.author_member_id) => {
                names.remove(name);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
