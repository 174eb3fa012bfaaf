//! Meshes and members on PostgreSQL: [`MeshStore`], and the member row helpers that invite
//! redemption shares.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio_postgres::Row;

use super::{PgStore, groups_json, pg_error};
use crate::ids;
use crate::store::{Member, Mesh, MeshStore, NewMember, Role, StoreError, StoreResult};

pub(super) const MEMBER_COLUMNS: &str = "id, mesh_id, pubkey, display_name, role, user_id, revoked_at, peer_grants, \
                              default_groups, role_tag, message_mode, created_at";

/// A member row. Grants that do not parse are an error, never "no grants" (which would
/// mean the permissive defaults).
pub(super) fn member_from_row(r: &Row) -> StoreResult<Member> {
    let grants: Value = r.get("peer_grants");
    let groups: Value = r.get("default_groups");
    let peer_grants = parse_grants(grants)?;
    Ok(Member {
        id: r.get("id"),
        mesh_id: r.get("mesh_id"),
        pubkey: r.get("pubkey"),
        display_name: r.get("display_name"),
        role: Role::parse(r.get("role")).unwrap_or(Role::Member),
        user_id: r.get("user_id"),
        revoked_at: r.get("revoked_at"),
        peer_grants,
        default_groups: serde_json::from_value(groups).unwrap_or_default(),
        role_tag: r.get("role_tag"),
        message_mode: r.get("message_mode"),
        created_at: r.get("created_at"),
    })
}

fn parse_grants(grants: Value) -> StoreResult<BTreeMap<String, Vec<String>>> {
    serde_json::from_value(grants)
        .map_err(|e| StoreError::Unavailable(format!("unreadable peer_grants: {e}")))
}

fn mesh_from_row(r: &Row) -> Mesh {
    Mesh {
        id: r.get("id"),
        slug: r.get("slug"),
        name: r.get("name"),
        owner_user_id: r.get("owner_user_id"),
        owner_seed_hex: r.get("owner_seed_hex"),
        owner_pubkey: r.get("owner_pubkey"),
        root_key: r.get("root_key"),
        created_at: r.get("created_at"),
    }
}

/// Inserts a new member row (operator API enrolment and invite redemption), on a pooled
/// connection or inside a transaction.
pub(super) async fn insert_member(
    c: &impl deadpool_postgres::GenericClient,
    mesh_id: &str,
    m: &NewMember,
) -> Result<Row, tokio_postgres::Error> {
    let sql = format!(
        "INSERT INTO members (id, mesh_id, pubkey, display_name, role, user_id, default_groups, role_tag, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {MEMBER_COLUMNS}"
    );
    c.query_one(
        &sql,
        &[
            &ids::random_id(24),
            &mesh_id,
            &m.pubkey,
            &m.display_name,
            &m.role.as_str(),
            &m.user_id,
            &groups_json(&m.default_groups),
            &m.role_tag,
            &ids::now_ms(),
        ],
    )
    .await
}

#[async_trait]
impl MeshStore for PgStore {
    async fn create_mesh(&self, mesh: Mesh) -> StoreResult<Mesh> {
        self.execute(
            "INSERT INTO meshes (id, slug, name, owner_user_id, owner_seed_hex, owner_pubkey, root_key, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &mesh.id,
                &mesh.slug,
                &mesh.name,
                &mesh.owner_user_id,
                &mesh.owner_seed_hex,
                &mesh.owner_pubkey,
                &mesh.root_key,
                &mesh.created_at,
            ],
        )
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => StoreError::Conflict(format!("slug {:?} is taken", mesh.slug)),
            e => e,
        })?;
        Ok(mesh)
    }

    async fn mesh(&self, mesh_id: &str) -> StoreResult<Option<Mesh>> {
        let rows = self
            .query("SELECT * FROM meshes WHERE id = $1", &[&mesh_id])
            .await?;
        Ok(rows.first().map(mesh_from_row))
    }

    async fn add_member(&self, mesh_id: &str, m: NewMember) -> StoreResult<Member> {
        let c = self.conn().await?;
        let row = insert_member(&c, mesh_id, &m)
            .await
            .map_err(|e| match pg_error(e) {
                StoreError::Conflict(_) => {
                    StoreError::Conflict("pubkey is already a member of this mesh".into())
                }
                e => e,
            })?;
        member_from_row(&row)
    }

    async fn members(&self, mesh_id: &str) -> StoreResult<Vec<Member>> {
        let sql = format!(
            "SELECT {MEMBER_COLUMNS} FROM members WHERE mesh_id = $1 ORDER BY created_at, id"
        );
        self.query(&sql, &[&mesh_id])
            .await?
            .iter()
            .map(member_from_row)
            .collect()
    }

    async fn member_by_pubkey(&self, mesh_id: &str, pubkey: &str) -> StoreResult<Option<Member>> {
        let sql =
            format!("SELECT {MEMBER_COLUMNS} FROM members WHERE mesh_id = $1 AND pubkey = $2");
        self.query(&sql, &[&mesh_id, &pubkey])
            .await?
            .first()
            .map(member_from_row)
            .transpose()
    }

    async fn member(&self, mesh_id: &str, member_id: &str) -> StoreResult<Option<Member>> {
        let sql = format!("SELECT {MEMBER_COLUMNS} FROM members WHERE mesh_id = $1 AND id = $2");
        self.query(&sql, &[&mesh_id, &member_id])
            .await?
            .first()
            .map(member_from_row)
            .transpose()
    }

    async fn update_grants(
        &self,
        mesh_id: &str,
        member_id: &str,
        patch: BTreeMap<String, Option<Vec<String>>>,
    ) -> StoreResult<BTreeMap<String, Vec<String>>> {
        // One statement: `||` merges the set entries, `-` removes the null ones.
        let set: Map<String, Value> = patch
            .iter()
            .filter_map(|(k, v)| {
                v.as_ref()
                    .map(|caps| (k.clone(), Value::from(caps.clone())))
            })
            .collect();
        let remove: Vec<String> = patch
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        let rows = self
            .query(
                "UPDATE members SET peer_grants = (peer_grants || $3::jsonb) - $4::text[] \
                 WHERE mesh_id = $1 AND id = $2 RETURNING peer_grants",
                &[&mesh_id, &member_id, &Value::Object(set), &remove],
            )
            .await?;
        let row = rows.first().ok_or(StoreError::NotFound)?;
        parse_grants(row.get::<_, Value>(0))
    }

    async fn set_revoked(
        &self,
        mesh_id: &str,
        member_id: &str,
        at: Option<i64>,
    ) -> StoreResult<()> {
        let n = self
            .execute(
                "UPDATE members SET revoked_at = $3 WHERE mesh_id = $1 AND id = $2",
                &[&mesh_id, &member_id, &at],
            )
            .await?;
        if n == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    async fn list_meshes(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<Mesh>> {
        // The primary key's order, so a page is one index range scan.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "SELECT * FROM meshes WHERE $1::text IS NULL OR id > $1 ORDER BY id LIMIT $2",
                &[&after, &limit],
            )
            .await?;
        Ok(rows.iter().map(mesh_from_row).collect())
    }

    async fn delete_mesh(&self, mesh_id: &str) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        // Serialised with this mesh's audit appends, which would otherwise extend the chain
        // being deleted.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&super::audit::AUDIT_LOCK_CLASS, &mesh_id],
        )
        .await
        .map_err(pg_error)?;
        // Keyed by sender member only: before the member rows go.
        tx.execute(
            "DELETE FROM message_dedup WHERE sender_member_id IN (SELECT id FROM members WHERE mesh_id = $1)",
            &[&mesh_id],
        )
        .await
        .map_err(pg_error)?;
        // Every table of the schema with a `mesh_id` column holds mesh-scoped state (the
        // queue, peer state, the audit chain, and each extension family's tables, with or
        // without a foreign key to `meshes`), so a family added later is purged too.
        for table in mesh_scoped_tables(&tx).await? {
            if table == "members" || table == "invites" {
                continue; // below, by the cascade from `meshes`
            }
            let sql = format!("DELETE FROM {} WHERE mesh_id = $1", quote_ident(&table));
            tx.execute(&sql, &[&mesh_id]).await.map_err(pg_error)?;
        }
        let n = tx
            .execute("DELETE FROM meshes WHERE id = $1", &[&mesh_id])
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(n > 0)
    }

    async fn delete_member(&self, mesh_id: &str, member_id: &str) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        let Some(row) = tx
            .query_opt(
                "DELETE FROM members WHERE mesh_id = $1 AND id = $2 RETURNING pubkey",
                &[&mesh_id, &member_id],
            )
            .await
            .map_err(pg_error)?
        else {
            return Ok(false);
        };
        let pubkey: String = row.get(0);
        tx.execute(
            "UPDATE members SET peer_grants = peer_grants - $2::text              WHERE mesh_id = $1 AND peer_grants ? $2",
            &[&mesh_id, &pubkey],
        )
        .await
        .map_err(pg_error)?;
        tx.execute(
            "DELETE FROM message_queue WHERE mesh_id = $1 AND target_member_id = $2",
            &[&mesh_id, &member_id],
        )
        .await
        .map_err(pg_error)?;
        tx.execute(
            "DELETE FROM message_dedup WHERE sender_member_id = $1",
            &[&member_id],
        )
        .await
        .map_err(pg_error)?;
        // What only the member had: its saved peer state, and its scheduled messages,
        // which would fire as a member that no longer exists. What it gave the mesh
        // (memories, tasks, shared state, streams, delivery records) stays, like the
        // messages it sent.
        for sql in [
            "DELETE FROM peer_state WHERE mesh_id = $1 AND member_id = $2",
            "DELETE FROM scheduled_message WHERE mesh_id = $1 AND member_id = $2",
            // Its URL watches would poll for a member that no longer exists.
            "DELETE FROM url_watch WHERE mesh_id = $1 AND member_id = $2",
            // Its persistent MCP registrations: nobody could restore or unregister them.
            "DELETE FROM mcp_server WHERE mesh_id = $1 AND host_member_id = $2",
            // Its topic memberships, sealed topic-key copies and mention notifications
            // (the topic messages it posted stay, like the messages it sent).
            "DELETE FROM topic_member WHERE member_id = $2 \
             AND topic_id IN (SELECT id FROM topic WHERE mesh_id = $1)",
            "DELETE FROM topic_member_key WHERE member_id = $2 \
             AND topic_id IN (SELECT id FROM topic WHERE mesh_id = $1)",
            "DELETE FROM notification WHERE mesh_id = $1 AND recipient_member_id = $2",
        ] {
            tx.execute(sql, &[&mesh_id, &member_id])
                .await
                .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(true)
    }
}

/// The tables of the current schema that have a `mesh_id` column.
async fn mesh_scoped_tables(tx: &deadpool_postgres::Transaction<'_>) -> StoreResult<Vec<String>> {
    let rows = tx
        .query(
            "SELECT c.table_name::text FROM information_schema.columns c \
             JOIN information_schema.tables t \
               ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
             WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' \
               AND c.column_name = 'mesh_id' \
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(pg_error)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A table name as an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[async_trait]
impl crate::store::web_members::WebMemberStore for PgStore {
    async fn web_member(&self, mesh_id: &str, user_id: &str) -> StoreResult<Option<Member>> {
        let sql =
            format!("SELECT {MEMBER_COLUMNS} FROM members WHERE mesh_id = $1 AND web_user_id = $2");
        match self.query(&sql, &[&mesh_id, &user_id]).await?.first() {
            Some(r) => Ok(Some(member_from_row(r)?)),
            None => Ok(None),
        }
    }

    async fn create_web_member(
        &self,
        mesh_id: &str,
        user_id: &str,
        m: NewMember,
    ) -> StoreResult<(Member, bool)> {
        let sql = format!(
            "INSERT INTO members (id, mesh_id, pubkey, display_name, role, user_id, default_groups, role_tag, created_at, web_user_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (mesh_id, web_user_id) WHERE web_user_id IS NOT NULL DO NOTHING \
             RETURNING {MEMBER_COLUMNS}"
        );
        let rows = self
            .query(
                &sql,
                &[
                    &ids::random_id(24),
                    &mesh_id,
                    &m.pubkey,
                    &m.display_name,
                    &m.role.as_str(),
                    &m.user_id,
                    &groups_json(&m.default_groups),
                    &m.role_tag,
                    &ids::now_ms(),
                    &user_id,
                ],
            )
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => {
                    StoreError::Conflict("pubkey is already a member of this mesh".into())
                }
                e => e,
            })?;
        if let Some(r) = rows.first() {
            return Ok((member_from_row(r)?, true));
        }
        let found = self
            .web_member(mesh_id, user_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok((found, false))
    }

    async fn is_web_member(&self, mesh_id: &str, member_id: &str) -> StoreResult<bool> {
        let rows = self
            .query(
                "SELECT 1 FROM members WHERE mesh_id = $1 AND id = $2 AND web_user_id IS NOT NULL",
                &[&mesh_id, &member_id],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn set_web_member_pubkey(
        &self,
        mesh_id: &str,
        member_id: &str,
        pubkey: &str,
    ) -> StoreResult<crate::store::web_members::KeyChange> {
        use crate::store::web_members::KeyChange;
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        let Some(row) = tx
            .query_opt(
                "SELECT pubkey, web_user_id FROM members WHERE mesh_id = $1 AND id = $2 FOR UPDATE",
                &[&mesh_id, &member_id],
            )
            .await
            .map_err(pg_error)?
        else {
            return Ok(KeyChange::NotFound);
        };
        let old: String = row.get("pubkey");
        let web: Option<String> = row.get("web_user_id");
        if web.is_none() {
            return Ok(KeyChange::NotWebManaged);
        }
        let changed = old != pubkey;
        let sql = format!(
            "UPDATE members SET pubkey = $3 WHERE mesh_id = $1 AND id = $2 RETURNING {MEMBER_COLUMNS}"
        );
        let row = tx
            .query_one(&sql, &[&mesh_id, &member_id, &pubkey])
            .await
            .map_err(|e| match pg_error(e) {
                StoreError::Conflict(_) => {
                    StoreError::Conflict("pubkey is already a member of this mesh".into())
                }
                e => e,
            })?;
        let member = member_from_row(&row)?;
        if changed {
            tx.execute(
                "DELETE FROM topic_member_key WHERE member_id = $1",
                &[&member_id],
            )
            .await
            .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(KeyChange::Set {
            member: Box::new(member),
            changed,
        })
    }
}
