//! Invites on PostgreSQL: [`InviteStore`]. A redemption locks the invite row, so
//! concurrent redemptions of one invite count its uses exactly.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::members::{MEMBER_COLUMNS, insert_member, member_from_row};
use super::{PgStore, pg_error};
use crate::store::{Enrolment, Invite, InviteStore, NewMember, Role, StoreError, StoreResult};

fn invite_from_row(r: &Row) -> Invite {
    Invite {
        code: r.get("code"),
        token: r.get("token"),
        mesh_id: r.get("mesh_id"),
        role: Role::parse(r.get("role")).unwrap_or(Role::Member),
        expires_at: r.get("expires_at"),
        max_uses: r.get::<_, Option<i32>>("max_uses").map(|m| m.max(0) as u32),
        uses: r.get::<_, i32>("uses").max(0) as u32,
        payload: r.get("payload"),
    }
}

#[async_trait]
impl InviteStore for PgStore {
    async fn create_invite(&self, i: Invite) -> StoreResult<()> {
        let max_uses = i.max_uses.map(|m| m.min(i32::MAX as u32) as i32);
        self.execute(
            "INSERT INTO invites (code, token, mesh_id, role, expires_at, max_uses, uses, payload) \
             VALUES ($1, $2, $3, $4, $5, $6, 0, $7)",
            &[
                &i.code,
                &i.token,
                &i.mesh_id,
                &i.role.as_str(),
                &i.expires_at,
                &max_uses,
                &i.payload,
            ],
        )
        .await?;
        Ok(())
    }

    async fn invite_by_token(&self, token: &str) -> StoreResult<Option<Invite>> {
        let rows = self
            .query(
                "SELECT * FROM invites WHERE token = $1 OR code = $1 LIMIT 1",
                &[&token],
            )
            .await?;
        Ok(rows.first().map(invite_from_row))
    }

    async fn redeem_invite(&self, code: &str, m: NewMember, now_s: i64) -> StoreResult<Enrolment> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        // The row lock serialises concurrent redemptions of one invite.
        let row = tx
            .query_opt("SELECT * FROM invites WHERE code = $1 FOR UPDATE", &[&code])
            .await
            .map_err(pg_error)?
            .ok_or(StoreError::NotFound)?;
        let invite = invite_from_row(&row);
        let sql =
            format!("SELECT {MEMBER_COLUMNS} FROM members WHERE mesh_id = $1 AND pubkey = $2");
        if let Some(existing) = tx
            .query_opt(&sql, &[&invite.mesh_id, &m.pubkey])
            .await
            .map_err(pg_error)?
        {
            return Ok(Enrolment {
                member: member_from_row(&existing)?,
                already_member: true,
            });
        }
        if invite.expires_at <= now_s {
            return Err(StoreError::Invalid("invite has expired".into()));
        }
        if invite.max_uses.is_some_and(|max| invite.uses >= max) {
            return Err(StoreError::Invalid("invite has no uses left".into()));
        }
        let row = insert_member(&tx, &invite.mesh_id, &m)
            .await
            .map_err(pg_error)?;
        tx.execute(
            "UPDATE invites SET uses = uses + 1 WHERE code = $1",
            &[&code],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(Enrolment {
            member: member_from_row(&row)?,
            already_member: false,
        })
    }
}
