//! [`ClockStore`](crate::store::clocks::ClockStore) on PostgreSQL: the `clock` table, its
//! lease columns and the tick compare-and-set.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{PgStore, pg_error};
use crate::store::StoreResult;
use crate::store::clocks::{ClockState, ClockStore, TICK_SIM_MS};

const COLUMNS: &str = "mesh_id, speed, paused, tick, sim_time, started_at, last_tick_at";

fn clock_from_row(r: &Row) -> ClockState {
    ClockState {
        mesh_id: r.get("mesh_id"),
        speed: r.get("speed"),
        paused: r.get("paused"),
        tick: r.get("tick"),
        sim_time: r.get("sim_time"),
        started_at: r.get("started_at"),
        last_tick_at: r.get("last_tick_at"),
    }
}

#[async_trait]
impl ClockStore for PgStore {
    async fn clock(&self, mesh_id: &str) -> StoreResult<Option<ClockState>> {
        let sql = format!("SELECT {COLUMNS} FROM clock WHERE mesh_id = $1");
        Ok(self
            .query(&sql, &[&mesh_id])
            .await?
            .first()
            .map(clock_from_row))
    }

    async fn set_clock(&self, mesh_id: &str, speed: f64, now_ms: i64) -> StoreResult<ClockState> {
        let sql = format!(
            "INSERT INTO clock (mesh_id, speed, sim_time, started_at, last_tick_at) \
             VALUES ($1, $2, $3, $3, $3) \
             ON CONFLICT (mesh_id) DO UPDATE SET speed = EXCLUDED.speed \
             RETURNING {COLUMNS}"
        );
        let rows = self.query(&sql, &[&mesh_id, &speed, &now_ms]).await?;
        rows.first()
            .map(clock_from_row)
            .ok_or_else(|| crate::store::StoreError::Unavailable("no clock row returned".into()))
    }

    async fn set_clock_paused(
        &self,
        mesh_id: &str,
        paused: bool,
        now_ms: i64,
    ) -> StoreResult<Option<ClockState>> {
        let sql = format!(
            "UPDATE clock SET \
             last_tick_at = CASE WHEN paused AND NOT $2 THEN $3 ELSE last_tick_at END, \
             paused = $2 \
             WHERE mesh_id = $1 RETURNING {COLUMNS}"
        );
        Ok(self
            .query(&sql, &[&mesh_id, &paused, &now_ms])
            .await?
            .first()
            .map(clock_from_row))
    }

    async fn lease_clocks(
        &self,
        holder: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<ClockState>> {
        let until = now_ms + lease_ms;
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        let renewed = tx
            .execute(
                "UPDATE clock SET lease_until = $2 WHERE authority = $1 AND NOT paused",
                &[&holder, &until],
            )
            .await
            .map_err(pg_error)?;
        let room = (limit as i64 - renewed as i64).max(0);
        if room > 0 {
            tx.execute(
                "UPDATE clock SET authority = $1, lease_until = $2 \
                 WHERE mesh_id IN (SELECT mesh_id FROM clock \
                                   WHERE NOT paused AND (authority IS NULL OR lease_until < $3) \
                                   ORDER BY mesh_id LIMIT $4 FOR UPDATE SKIP LOCKED)",
                &[&holder, &until, &now_ms, &room],
            )
            .await
            .map_err(pg_error)?;
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM clock WHERE authority = $1 AND NOT paused ORDER BY mesh_id"
        );
        let rows = tx.query(&sql, &[&holder]).await.map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(rows.iter().map(clock_from_row).collect())
    }

    async fn release_clock(&self, mesh_id: &str, holder: &str) -> StoreResult<()> {
        self.execute(
            "UPDATE clock SET authority = NULL, lease_until = 0 WHERE mesh_id = $1 AND authority = $2",
            &[&mesh_id, &holder],
        )
        .await?;
        Ok(())
    }

    async fn advance_clock(
        &self,
        mesh_id: &str,
        holder: &str,
        tick: i64,
        now_ms: i64,
    ) -> StoreResult<Option<ClockState>> {
        let sql = format!(
            "UPDATE clock SET tick = tick + 1, sim_time = sim_time + $5, last_tick_at = $4 \
             WHERE mesh_id = $1 AND authority = $2 AND tick = $3 AND NOT paused AND lease_until > $4 \
             RETURNING {COLUMNS}"
        );
        Ok(self
            .query(&sql, &[&mesh_id, &holder, &tick, &now_ms, &TICK_SIM_MS])
            .await?
            .first()
            .map(clock_from_row))
    }

    async fn auto_pause_clock(&self, mesh_id: &str, holder: &str) -> StoreResult<bool> {
        let n = self
            .execute(
                "UPDATE clock SET paused = true, authority = NULL, lease_until = 0 \
                 WHERE mesh_id = $1 AND authority = $2 AND NOT paused",
                &[&mesh_id, &holder],
            )
            .await?;
        Ok(n > 0)
    }
}
