//! Per-member peer state on PostgreSQL: [`PeerStateStore`], one upserted row per member.

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::{PgStore, groups_json};
use crate::store::{PeerState, PeerStateStore, StoreResult};

#[async_trait]
impl PeerStateStore for PgStore {
    async fn save_peer_state(
        &self,
        mesh_id: &str,
        member_id: &str,
        s: PeerState,
    ) -> StoreResult<()> {
        self.execute(
            "INSERT INTO peer_state (mesh_id, member_id, groups, summary, profile, stats, last_seen_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (mesh_id, member_id) DO UPDATE SET groups = EXCLUDED.groups, summary = EXCLUDED.summary, \
             profile = EXCLUDED.profile, stats = EXCLUDED.stats, last_seen_at = EXCLUDED.last_seen_at",
            &[
                &mesh_id,
                &member_id,
                &groups_json(&s.groups),
                &s.summary,
                &Value::Object(s.profile),
                &s.stats,
                &s.last_seen_at,
            ],
        )
        .await?;
        Ok(())
    }

    async fn peer_state(&self, mesh_id: &str, member_id: &str) -> StoreResult<Option<PeerState>> {
        let rows = self
            .query(
                "SELECT * FROM peer_state WHERE mesh_id = $1 AND member_id = $2",
                &[&mesh_id, &member_id],
            )
            .await?;
        Ok(rows.first().map(|r| PeerState {
            groups: serde_json::from_value(r.get::<_, Value>("groups")).unwrap_or_default(),
            summary: r.get("summary"),
            profile: match r.get::<_, Value>("profile") {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            stats: r.get("stats"),
            last_seen_at: r.get("last_seen_at"),
        }))
    }
}
