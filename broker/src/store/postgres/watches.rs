//! [`WatchStore`](crate::store::watches::WatchStore) on PostgreSQL: table `url_watch`. A
//! create counts and inserts under the mesh's advisory lock, so both bounds are exact; a
//! claim leases due rows with `FOR UPDATE SKIP LOCKED`, so concurrent claimers on several
//! replicas never take the same row, and a record is applied only by the lease holder.

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{PgStore, pg_error};
use crate::store::StoreResult;
use crate::store::watches::{Watch, WatchCreated, WatchStore};

/// First key of the per-mesh advisory lock of new watches (the second is a hash of the
/// mesh id).
const WATCH_LOCK_CLASS: i32 = 0x7761_7463; // "watc"

const COLUMNS: &str = "id, mesh_id, member_id, url, mode, extract, interval_secs, notify_on, \
                       headers, label, last_value, last_check, created_at, next_check_at";

fn from_row(r: &Row) -> Watch {
    let headers: String = r.get("headers");
    let interval: i32 = r.get("interval_secs");
    Watch {
        id: r.get("id"),
        mesh_id: r.get("mesh_id"),
        member_id: r.get("member_id"),
        url: r.get("url"),
        mode: r.get("mode"),
        extract: r.get("extract"),
        interval_secs: interval.max(1) as u32,
        notify_on: r.get("notify_on"),
        headers: serde_json::from_str::<BTreeMap<String, String>>(&headers).unwrap_or_default(),
        label: r.get("label"),
        last_value: r.get("last_value"),
        last_check: r.get("last_check"),
        created_at: r.get("created_at"),
        next_check_at: r.get("next_check_at"),
    }
}

#[async_trait]
impl WatchStore for PgStore {
    async fn watch_create(
        &self,
        w: Watch,
        max_per_member: usize,
        max_per_mesh: usize,
    ) -> StoreResult<WatchCreated> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&WATCH_LOCK_CLASS, &w.mesh_id],
        )
        .await
        .map_err(pg_error)?;
        let row = tx
            .query_one(
                "SELECT count(*) AS n, count(*) FILTER (WHERE member_id = $2) AS mine \
                 FROM url_watch WHERE mesh_id = $1",
                &[&w.mesh_id, &w.member_id],
            )
            .await
            .map_err(pg_error)?;
        let (n, mine): (i64, i64) = (row.get("n"), row.get("mine"));
        if max_per_member > 0 && mine >= max_per_member as i64 {
            return Ok(WatchCreated::TooManyForMember);
        }
        if max_per_mesh > 0 && n >= max_per_mesh as i64 {
            return Ok(WatchCreated::TooManyForMesh);
        }
        let headers = serde_json::to_string(&w.headers).unwrap_or_else(|_| "{}".into());
        let interval = w.interval_secs.min(i32::MAX as u32) as i32;
        tx.execute(
            &format!(
                "INSERT INTO url_watch ({COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
            ),
            &[
                &w.id,
                &w.mesh_id,
                &w.member_id,
                &w.url,
                &w.mode,
                &w.extract,
                &interval,
                &w.notify_on,
                &headers,
                &w.label,
                &w.last_value,
                &w.last_check,
                &w.created_at,
                &w.next_check_at,
            ],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(WatchCreated::Created)
    }

    async fn watch_list(&self, mesh_id: &str, member_id: &str) -> StoreResult<Vec<Watch>> {
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM url_watch WHERE mesh_id = $1 AND member_id = $2 \
                     ORDER BY created_at, id"
                ),
                &[&mesh_id, &member_id],
            )
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    async fn watch_delete(
        &self,
        mesh_id: &str,
        member_id: &str,
        id: &str,
    ) -> StoreResult<Option<Watch>> {
        let rows = self
            .query(
                &format!(
                    "DELETE FROM url_watch WHERE mesh_id = $1 AND member_id = $2 AND id = $3 \
                     RETURNING {COLUMNS}"
                ),
                &[&mesh_id, &member_id, &id],
            )
            .await?;
        Ok(rows.first().map(from_row))
    }

    async fn watch_claim_due(
        &self,
        now: i64,
        lease_until: i64,
        owner: &str,
        limit: usize,
    ) -> StoreResult<Vec<Watch>> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = self
            .query(
                &format!(
                    "UPDATE url_watch SET lease_owner = $3, lease_until = $2 WHERE id IN ( \
                       SELECT id FROM url_watch WHERE next_check_at <= $1 AND lease_until <= $1 \
                       ORDER BY next_check_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
                     RETURNING {COLUMNS}"
                ),
                &[&now, &lease_until, &owner, &limit],
            )
            .await?;
        let mut claimed: Vec<Watch> = rows.iter().map(from_row).collect();
        claimed.sort_by_key(|w| w.next_check_at);
        Ok(claimed)
    }

    async fn watch_record(
        &self,
        id: &str,
        owner: &str,
        observed: Option<(String, i64)>,
        next_check_at: i64,
    ) -> StoreResult<bool> {
        let (value, at) = match observed {
            Some((v, at)) => (Some(v), Some(at)),
            None => (None, None),
        };
        let n = self
            .execute(
                "UPDATE url_watch SET next_check_at = $3, lease_owner = NULL, lease_until = 0, \
                 last_value = CASE WHEN $5::bigint IS NULL THEN last_value ELSE $4 END, \
                 last_check = COALESCE($5, last_check) \
                 WHERE id = $1 AND lease_owner = $2",
                &[&id, &owner, &next_check_at, &value, &at],
            )
            .await?;
        Ok(n > 0)
    }
}
