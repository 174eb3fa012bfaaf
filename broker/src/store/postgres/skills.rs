//! [`SkillStore`](crate::store::skills::SkillStore) on PostgreSQL: table `skill`, one row per
//! (mesh, name), `manifest` kept as the raw JSON text. A share runs in one transaction under
//! the mesh's advisory lock (so the per-mesh bound is exact) and reads the existing row
//! `FOR UPDATE` (so the author check and the replacement are one step).

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{PgStore, pg_error};
use crate::store::StoreResult;
use crate::store::skills::{ShareSkill, Skill, SkillActor, SkillStore};

/// First key of the per-mesh advisory lock of shares (the second is the mesh id's hash).
const SKILL_LOCK_CLASS: i32 = 0x736b_696c; // "skil"

const COLUMNS: &str = "mesh_id, name, description, instructions, tags, manifest, \
                       author_member_id, author_name, created_at, updated_at";

fn skill_from_row(r: &Row) -> Skill {
    Skill {
        mesh_id: r.get("mesh_id"),
        name: r.get("name"),
        description: r.get("description"),
        instructions: r.get("instructions"),
        tags: r.get("tags"),
        manifest: r.get("manifest"),
        author_member_id: r.get("author_member_id"),
        author_name: r.get("author_name"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

/// The author a change is restricted to (`None`: anyone's).
fn restricted_to<'a>(by: SkillActor<'a>) -> Option<&'a str> {
    match by {
        SkillActor::Admin => None,
        SkillActor::Member(id) => Some(id),
    }
}

#[async_trait]
impl SkillStore for PgStore {
    async fn share_skill(
        &self,
        s: Skill,
        by: SkillActor<'_>,
        max_skills: usize,
    ) -> StoreResult<ShareSkill> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&SKILL_LOCK_CLASS, &s.mesh_id],
        )
        .await
        .map_err(pg_error)?;
        let existing = tx
            .query_opt(
                "SELECT author_member_id FROM skill WHERE mesh_id = $1 AND name = $2 FOR UPDATE",
                &[&s.mesh_id, &s.name],
            )
            .await
            .map_err(pg_error)?;
        match existing {
            Some(row) => {
                let author: String = row.get(0);
                if restricted_to(by).is_some_and(|id| id != author) {
                    return Ok(ShareSkill::Forbidden);
                }
                tx.execute(
                    "UPDATE skill SET description = $3, instructions = $4, tags = $5, \
                     manifest = $6, author_member_id = $7, author_name = $8, updated_at = $9 \
                     WHERE mesh_id = $1 AND name = $2",
                    &[
                        &s.mesh_id,
                        &s.name,
                        &s.description,
                        &s.instructions,
                        &s.tags,
                        &s.manifest,
                        &s.author_member_id,
                        &s.author_name,
                        &s.updated_at,
                    ],
                )
                .await
                .map_err(pg_error)?;
            }
            None => {
                if max_skills > 0 {
                    let count: i64 = tx
                        .query_one(
                            "SELECT count(*) FROM skill WHERE mesh_id = $1",
                            &[&s.mesh_id],
                        )
                        .await
                        .map_err(pg_error)?
                        .get(0);
                    if count >= max_skills as i64 {
                        return Ok(ShareSkill::TooManySkills);
                    }
                }
                tx.execute(
                    &format!(
                        "INSERT INTO skill ({COLUMNS}) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                    ),
                    &[
                        &s.mesh_id,
                        &s.name,
                        &s.description,
                        &s.instructions,
                        &s.tags,
                        &s.manifest,
                        &s.author_member_id,
                        &s.author_name,
                        &s.created_at,
                        &s.updated_at,
                    ],
                )
                .await
                .map_err(pg_error)?;
            }
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(ShareSkill::Shared)
    }

    async fn skill(&self, mesh_id: &str, name: &str) -> StoreResult<Option<Skill>> {
        let rows = self
            .query(
                &format!("SELECT {COLUMNS} FROM skill WHERE mesh_id = $1 AND name = $2"),
                &[&mesh_id, &name],
            )
            .await?;
        Ok(rows.first().map(skill_from_row))
    }

    async fn list_skills(
        &self,
        mesh_id: &str,
        query: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Skill>> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM skill WHERE mesh_id = $1 AND ($2::text IS NULL \
                     OR strpos(lower(name), lower($2)) > 0 \
                     OR strpos(lower(description), lower($2)) > 0 \
                     OR EXISTS (SELECT 1 FROM unnest(tags) AS t WHERE strpos(lower(t), lower($2)) > 0)) \
                     ORDER BY name COLLATE \"C\" LIMIT $3"
                ),
                &[&mesh_id, &query, &limit],
            )
            .await?;
        Ok(rows.iter().map(skill_from_row).collect())
    }

    async fn remove_skill(
        &self,
        mesh_id: &str,
        name: &str,
        by: SkillActor<'_>,
    ) -> StoreResult<bool> {
        let n = self
            .execute(
                "DELETE FROM skill WHERE mesh_id = $1 AND name = $2 \
                 AND ($3::text IS NULL OR author_member_id = $3)",
                &[&mesh_id, &name, &restricted_to(by)],
            )
            .await?;
        Ok(n > 0)
    }
}
