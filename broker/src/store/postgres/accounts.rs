//! Accounts on PostgreSQL: [`AccountStore`]. Every state change of a device code is one
//! conditional `UPDATE` (or one transaction), so two replicas racing on one code cannot
//! both win; the consumed code and its session are written in one transaction.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::members::{MEMBER_COLUMNS, insert_member, member_from_row};
use super::{PgStore, pg_error};
use crate::ids;
use crate::store::accounts::{
    AccountStore, CliSession, Decision, DeviceCode, DeviceStatus, NewUser, Poll, User, UserMesh,
    UserPatch, WebSession,
};
use crate::store::{Member, Mesh, NewMember, StoreError, StoreResult};

const USER_COLUMNS: &str = "id, email, display_name, password_hash, is_admin, disabled, failed_logins, locked_until, created_at";
const CODE_COLUMNS: &str = "id, device_code, user_code, status, hostname, platform, arch, client_ip, user_id, expires_at, created_at, approved_at";
const SESSION_COLUMNS: &str = "id, user_id, token_hash, device_code_id, hostname, platform, arch, created_at, last_seen_at, expires_at, revoked_at";
const MESH_COLUMNS: &str =
    "id, slug, name, owner_user_id, owner_seed_hex, owner_pubkey, root_key, created_at";

fn user_from_row(r: &Row) -> User {
    User {
        id: r.get("id"),
        email: r.get("email"),
        display_name: r.get("display_name"),
        password_hash: r.get("password_hash"),
        is_admin: r.get("is_admin"),
        disabled: r.get("disabled"),
        failed_logins: r.get::<_, i32>("failed_logins").max(0) as u32,
        locked_until: r.get("locked_until"),
        created_at: r.get("created_at"),
    }
}

fn code_from_row(r: &Row) -> DeviceCode {
    DeviceCode {
        id: r.get("id"),
        device_code: r.get("device_code"),
        user_code: r.get("user_code"),
        status: DeviceStatus::parse(r.get("status")),
        hostname: r.get("hostname"),
        platform: r.get("platform"),
        arch: r.get("arch"),
        client_ip: r.get("client_ip"),
        user_id: r.get("user_id"),
        expires_at: r.get("expires_at"),
        created_at: r.get("created_at"),
        approved_at: r.get("approved_at"),
    }
}

fn session_from_row(r: &Row) -> CliSession {
    CliSession {
        id: r.get("id"),
        user_id: r.get("user_id"),
        token_hash: r.get("token_hash"),
        device_code_id: r.get("device_code_id"),
        hostname: r.get("hostname"),
        platform: r.get("platform"),
        arch: r.get("arch"),
        created_at: r.get("created_at"),
        last_seen_at: r.get("last_seen_at"),
        expires_at: r.get("expires_at"),
        revoked_at: r.get("revoked_at"),
    }
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

async fn insert_session(
    c: &impl deadpool_postgres::GenericClient,
    s: &CliSession,
) -> Result<u64, tokio_postgres::Error> {
    c.execute(
        "INSERT INTO cli_sessions (id, user_id, token_hash, device_code_id, hostname, platform, arch, created_at, last_seen_at, expires_at, revoked_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &s.id,
            &s.user_id,
            &s.token_hash,
            &s.device_code_id,
            &s.hostname,
            &s.platform,
            &s.arch,
            &s.created_at,
            &s.last_seen_at,
            &s.expires_at,
            &s.revoked_at,
        ],
    )
    .await
}

/// Revokes the user's oldest live sessions beyond `max_live`.
async fn revoke_beyond(
    c: &impl deadpool_postgres::GenericClient,
    user_id: &str,
    max_live: usize,
    now: i64,
) -> StoreResult<()> {
    let keep = i64::try_from(max_live).unwrap_or(i64::MAX);
    c.execute(
        "UPDATE cli_sessions SET revoked_at = $2 WHERE id IN ( \
           SELECT id FROM cli_sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 \
           ORDER BY created_at DESC, seq DESC OFFSET $3)",
        &[&user_id, &now, &keep],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

impl PgStore {
    /// The user's meshes, optionally only the one with `slug`.
    async fn select_user_meshes(
        &self,
        user_id: &str,
        slug: Option<&str>,
    ) -> StoreResult<Vec<UserMesh>> {
        let sql = format!(
            "SELECT {cols}, \
               (SELECT count(*) FROM members c WHERE c.mesh_id = m.id AND c.revoked_at IS NULL)::bigint AS member_count, \
               (SELECT c.id FROM members c WHERE c.mesh_id = m.id AND c.user_id = $1 AND c.revoked_at IS NULL \
                ORDER BY c.created_at LIMIT 1) AS own_member \
             FROM meshes m \
             WHERE m.archived_at IS NULL AND ($2::text IS NULL OR m.slug = $2) \
               AND (m.owner_user_id = $1 OR EXISTS (SELECT 1 FROM members c WHERE c.mesh_id = m.id \
                    AND c.user_id = $1 AND c.revoked_at IS NULL)) \
             ORDER BY m.created_at",
            cols = MESH_COLUMNS
                .split(", ")
                .map(|c| format!("m.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rows = self.query(&sql, &[&user_id, &slug]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mesh = mesh_from_row(&r);
            let own: Option<String> = r.get("own_member");
            let member = match own {
                Some(id) => {
                    let sql = format!(
                        "SELECT {MEMBER_COLUMNS} FROM members WHERE mesh_id = $1 AND id = $2"
                    );
                    let rows = self.query(&sql, &[&mesh.id, &id]).await?;
                    match rows.first() {
                        Some(row) => Some(member_from_row(row)?),
                        None => None,
                    }
                }
                None => None,
            };
            out.push(UserMesh {
                is_owner: mesh.owner_user_id.as_deref() == Some(user_id),
                member_count: r.get::<_, i64>("member_count").max(0) as u64,
                mesh,
                member,
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl AccountStore for PgStore {
    async fn create_user(&self, u: NewUser) -> StoreResult<User> {
        let sql = format!(
            "INSERT INTO users (id, email, display_name, password_hash, is_admin, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {USER_COLUMNS}"
        );
        let id = u.id.unwrap_or_else(|| ids::random_id(24));
        let rows = self
            .query(
                &sql,
                &[
                    &id,
                    &u.email,
                    &u.display_name,
                    &u.password_hash,
                    &u.is_admin,
                    &ids::now_ms(),
                ],
            )
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => {
                    StoreError::Conflict("a user with this email exists".into())
                }
                e => e,
            })?;
        rows.first()
            .map(user_from_row)
            .ok_or_else(|| StoreError::Unavailable("insert returned no row".into()))
    }

    async fn user(&self, id: &str) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        Ok(self.query(&sql, &[&id]).await?.first().map(user_from_row))
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE lower(email) = lower($1)");
        Ok(self
            .query(&sql, &[&email])
            .await?
            .first()
            .map(user_from_row))
    }

    async fn users(&self, limit: usize) -> StoreResult<Vec<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id LIMIT $1");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .query(&sql, &[&limit])
            .await?
            .iter()
            .map(user_from_row)
            .collect())
    }

    async fn update_user(&self, id: &str, p: UserPatch) -> StoreResult<User> {
        let sql = format!(
            "UPDATE users SET display_name = coalesce($2, display_name), email = coalesce($3, email), \
               password_hash = coalesce($4, password_hash), disabled = coalesce($5, disabled), \
               failed_logins = CASE WHEN $6::boolean THEN 0 ELSE failed_logins END, \
               locked_until = CASE WHEN $6::boolean THEN NULL ELSE locked_until END \
             WHERE id = $1 RETURNING {USER_COLUMNS}"
        );
        let rows = self
            .query(
                &sql,
                &[
                    &id,
                    &p.display_name,
                    &p.email,
                    &p.password_hash,
                    &p.disabled,
                    &p.unlock,
                ],
            )
            .await?;
        rows.first().map(user_from_row).ok_or(StoreError::NotFound)
    }

    async fn record_login_failure(
        &self,
        id: &str,
        now: i64,
        max_failures: u32,
        lockout_ms: i64,
    ) -> StoreResult<Option<i64>> {
        let max = i32::try_from(max_failures).unwrap_or(i32::MAX);
        let rows = self
            .query(
                "UPDATE users SET \
                   locked_until = CASE WHEN $3::int > 0 AND failed_logins + 1 >= $3::int \
                     THEN $2::bigint + $4::bigint ELSE locked_until END, \
                   failed_logins = CASE WHEN $3::int > 0 AND failed_logins + 1 >= $3::int \
                     THEN 0 ELSE failed_logins + 1 END \
                 WHERE id = $1 RETURNING locked_until",
                &[&id, &now, &max, &lockout_ms],
            )
            .await?;
        let row = rows.first().ok_or(StoreError::NotFound)?;
        Ok(row
            .get::<_, Option<i64>>("locked_until")
            .filter(|t| *t > now))
    }

    async fn create_device_code(&self, d: DeviceCode, max_pending: u64) -> StoreResult<()> {
        let now = d.created_at;
        self.execute(
            "DELETE FROM device_codes WHERE expires_at < $1",
            &[&(now - 3_600_000)],
        )
        .await?;
        let max = i64::try_from(max_pending).unwrap_or(i64::MAX);
        // The count and the insert in one statement: a burst across replicas overshoots
        // the cap by at most the number of concurrent inserts.
        let n = self
            .execute(
                "INSERT INTO device_codes (id, device_code, user_code, status, hostname, platform, arch, client_ip, expires_at, created_at) \
                 SELECT $1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9 \
                 WHERE (SELECT count(*) FROM device_codes WHERE status = 'pending' AND expires_at > $9) < $10",
                &[
                    &d.id,
                    &d.device_code,
                    &d.user_code,
                    &d.hostname,
                    &d.platform,
                    &d.arch,
                    &d.client_ip,
                    &d.expires_at,
                    &now,
                    &max,
                ],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::Invalid("too many pending device codes".into()));
        }
        Ok(())
    }

    async fn device_code_by_session_or_user_code(
        &self,
        code: &str,
    ) -> StoreResult<Option<DeviceCode>> {
        let sql = format!(
            "SELECT {CODE_COLUMNS} FROM device_codes WHERE id = $1 OR user_code = $1 LIMIT 1"
        );
        Ok(self.query(&sql, &[&code]).await?.first().map(code_from_row))
    }

    async fn decide_device_code(
        &self,
        code: &str,
        user_id: &str,
        approve: bool,
        now: i64,
    ) -> StoreResult<Decision> {
        let rows = self
            .query(
                "UPDATE device_codes SET \
                   status = CASE WHEN expires_at <= $3::bigint THEN 'expired' WHEN $4::boolean THEN 'approved' ELSE 'denied' END, \
                   user_id = CASE WHEN expires_at > $3::bigint AND $4::boolean THEN $2::text ELSE user_id END, \
                   approved_at = CASE WHEN expires_at > $3::bigint AND $4::boolean THEN $3::bigint ELSE approved_at END \
                 WHERE (id = $1 OR user_code = $1) AND status = 'pending' RETURNING status",
                &[&code, &user_id, &now, &approve],
            )
            .await?;
        Ok(match rows.first().map(|r| r.get::<_, String>("status")) {
            None => Decision::NotFound,
            Some(s) if s == "expired" => Decision::Expired,
            Some(_) => Decision::Done,
        })
    }

    async fn poll_device_code(&self, device_code: &str, now: i64) -> StoreResult<Poll> {
        self.execute(
            "UPDATE device_codes SET status = 'expired' \
             WHERE device_code = $1 AND status IN ('pending', 'approved') AND expires_at <= $2",
            &[&device_code, &now],
        )
        .await?;
        let sql = format!("SELECT {CODE_COLUMNS} FROM device_codes WHERE device_code = $1");
        let rows = self.query(&sql, &[&device_code]).await?;
        let Some(dc) = rows.first().map(code_from_row) else {
            return Ok(Poll::Expired);
        };
        Ok(match dc.status {
            DeviceStatus::Pending => Poll::Pending,
            DeviceStatus::Approved => Poll::Approved(Box::new(dc)),
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
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        let n = tx
            .execute(
                "UPDATE device_codes SET status = 'consumed' \
                 WHERE id = $1 AND status = 'approved' AND expires_at > $2",
                &[&id, &now],
            )
            .await
            .map_err(pg_error)?;
        if n == 0 {
            return Ok(false);
        }
        insert_session(&tx, &session).await.map_err(pg_error)?;
        revoke_beyond(&tx, &session.user_id, max_live, now).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(true)
    }

    async fn insert_cli_session(&self, s: CliSession, max_live: usize) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        insert_session(&tx, &s).await.map_err(pg_error)?;
        revoke_beyond(&tx, &s.user_id, max_live, s.created_at).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(())
    }

    async fn cli_session_by_hash(&self, token_hash: &str) -> StoreResult<Option<CliSession>> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM cli_sessions WHERE token_hash = $1");
        Ok(self
            .query(&sql, &[&token_hash])
            .await?
            .first()
            .map(session_from_row))
    }

    async fn touch_cli_session(&self, id: &str, now: i64) -> StoreResult<()> {
        self.execute(
            "UPDATE cli_sessions SET last_seen_at = $2 WHERE id = $1",
            &[&id, &now],
        )
        .await?;
        Ok(())
    }

    async fn revoke_cli_session_by_hash(&self, token_hash: &str, now: i64) -> StoreResult<bool> {
        let n = self
            .execute(
                "UPDATE cli_sessions SET revoked_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL",
                &[&token_hash, &now],
            )
            .await?;
        Ok(n > 0)
    }

    async fn revoke_cli_session(&self, user_id: &str, id: &str, now: i64) -> StoreResult<bool> {
        let n = self
            .execute(
                "UPDATE cli_sessions SET revoked_at = $3 WHERE id = $2 AND user_id = $1 AND revoked_at IS NULL",
                &[&user_id, &id, &now],
            )
            .await?;
        Ok(n > 0)
    }

    async fn cli_sessions(&self, user_id: &str, now: i64) -> StoreResult<Vec<CliSession>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM cli_sessions \
             WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 ORDER BY created_at DESC, seq DESC"
        );
        Ok(self
            .query(&sql, &[&user_id, &now])
            .await?
            .iter()
            .map(session_from_row)
            .collect())
    }

    async fn create_web_session(&self, s: WebSession) -> StoreResult<()> {
        self.execute(
            "DELETE FROM web_sessions WHERE expires_at <= $1",
            &[&s.created_at],
        )
        .await?;
        self.execute(
            "INSERT INTO web_sessions (id_hash, user_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            &[&s.id_hash, &s.user_id, &s.csrf, &s.created_at, &s.expires_at],
        )
        .await?;
        Ok(())
    }

    async fn web_session(&self, id_hash: &str, now: i64) -> StoreResult<Option<WebSession>> {
        let rows = self
            .query(
                "SELECT id_hash, user_id, csrf, created_at, expires_at FROM web_sessions \
                 WHERE id_hash = $1 AND expires_at > $2",
                &[&id_hash, &now],
            )
            .await?;
        Ok(rows.first().map(|r| WebSession {
            id_hash: r.get("id_hash"),
            user_id: r.get("user_id"),
            csrf: r.get("csrf"),
            created_at: r.get("created_at"),
            expires_at: r.get("expires_at"),
        }))
    }

    async fn delete_web_session(&self, id_hash: &str) -> StoreResult<()> {
        self.execute("DELETE FROM web_sessions WHERE id_hash = $1", &[&id_hash])
            .await?;
        Ok(())
    }

    async fn delete_web_sessions_of(&self, user_id: &str) -> StoreResult<()> {
        self.execute("DELETE FROM web_sessions WHERE user_id = $1", &[&user_id])
            .await?;
        Ok(())
    }

    async fn use_sync_jti(&self, jti: &str, expires_at: i64, now: i64) -> StoreResult<bool> {
        self.execute("DELETE FROM sync_jtis WHERE expires_at <= $1", &[&now])
            .await?;
        let n = self
            .execute(
                "INSERT INTO sync_jtis (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
                &[&jti, &expires_at],
            )
            .await?;
        Ok(n > 0)
    }

    async fn create_owned_mesh(&self, m: Mesh, owner: NewMember) -> StoreResult<Member> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        tx.execute(
            "INSERT INTO meshes (id, slug, name, owner_user_id, owner_seed_hex, owner_pubkey, root_key, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &m.id,
                &m.slug,
                &m.name,
                &m.owner_user_id,
                &m.owner_seed_hex,
                &m.owner_pubkey,
                &m.root_key,
                &m.created_at,
            ],
        )
        .await
        .map_err(pg_error)?;
        let row = insert_member(&tx, &m.id, &owner).await.map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        member_from_row(&row)
    }

    async fn slug_taken(&self, slug: &str) -> StoreResult<bool> {
        let rows = self
            .query(
                "SELECT 1 FROM meshes WHERE slug = $1 AND archived_at IS NULL",
                &[&slug],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn user_meshes(&self, user_id: &str) -> StoreResult<Vec<UserMesh>> {
        self.select_user_meshes(user_id, None).await
    }

    async fn user_mesh_by_slug(&self, user_id: &str, slug: &str) -> StoreResult<Option<UserMesh>> {
        Ok(self
            .select_user_meshes(user_id, Some(slug))
            .await?
            .into_iter()
            .next())
    }

    async fn rename_mesh(&self, mesh_id: &str, slug: &str) -> StoreResult<()> {
        let n = self
            .execute(
                "UPDATE meshes SET slug = $2, name = $2 WHERE id = $1 AND archived_at IS NULL",
                &[&mesh_id, &slug],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn archive_mesh(&self, mesh_id: &str, now: i64) -> StoreResult<()> {
        let n = self
            .execute(
                "UPDATE meshes SET archived_at = $2 WHERE id = $1 AND archived_at IS NULL",
                &[&mesh_id, &now],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn mesh_archived(&self, mesh_id: &str) -> StoreResult<bool> {
        let rows = self
            .query(
                "SELECT archived_at IS NOT NULL AS archived FROM meshes WHERE id = $1",
                &[&mesh_id],
            )
            .await?;
        Ok(rows.first().is_some_and(|r| r.get::<_, bool>("archived")))
    }

    async fn link_member(&self, mesh_id: &str, member_id: &str, user_id: &str) -> StoreResult<()> {
        let n = self
            .execute(
                "UPDATE members SET user_id = $3 WHERE mesh_id = $1 AND id = $2",
                &[&mesh_id, &member_id, &user_id],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
