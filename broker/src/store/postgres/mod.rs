//! [`Store`] on PostgreSQL (deadpool-postgres): the durable truth of a cluster.
//!
//! Durable sends are group-committed by a writer task (see [`queue`]), `client_ack`s are
//! batched the same way, drains claim rows with `FOR UPDATE SKIP LOCKED` and a lease, and
//! audit appends serialise per mesh under `pg_advisory_xact_lock` (see [`audit`]).
//! The schema belongs to the migrator; this module only checks its version.

mod audit;
mod queue;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::{Map, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

use super::{
    AuditEntry, Claim, Enrolment, Invite, Member, Mesh, MessageRef, NewMember, PeerState,
    QueuedMessage, Role, Store, StoreError, StoreResult,
};
use crate::ids;
use crate::protocol::Group;

/// The newest migration this broker was built for (`migrator/migrations/V{n}__*.sql`).
pub const SCHEMA_VERSION: i64 = 2;

/// How long a query may wait for a pooled connection or a new one before it fails.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);

/// Histograms the store reports into (cloned handles of the broker's metrics).
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    pub batch_rows: prometheus_client::metrics::histogram::Histogram,
    pub pool_wait_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// The PostgreSQL store. Cloning shares the pool and the batching tasks.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    metrics: queue::Metrics,
    enqueuer: queue::Batcher<QueuedMessage, Option<String>>,
    acker: queue::Batcher<queue::AckItem, bool>,
    auditor: queue::Batcher<audit::AuditItem, ()>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

pub(crate) fn db_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn pg_error(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => {
            StoreError::Conflict("already exists".into())
        }
        Some(c) if *c == SqlState::FOREIGN_KEY_VIOLATION => StoreError::NotFound,
        _ => StoreError::Unavailable(e.to_string()),
    }
}

impl PgStore {
    /// Builds the pool and the batching tasks. Connections are opened lazily.
    pub fn new(url: &str, pool_size: usize) -> StoreResult<PgStore> {
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("DATABASE_URL: {e}")))?;
        pg.connect_timeout(POOL_TIMEOUT);
        if pg.get_application_name().is_none() {
            pg.application_name("mesh-broker");
        }
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(db_error)?;
        let metrics = queue::Metrics::default();
        Ok(PgStore {
            enqueuer: queue::Batcher::spawn(pool.clone(), metrics.clone(), queue::insert_batch),
            acker: queue::Batcher::spawn(pool.clone(), metrics.clone(), queue::ack_batch),
            auditor: queue::Batcher::spawn(pool.clone(), metrics.clone(), audit::append_batch),
            pool,
            metrics,
        })
    }

    /// Reports batch sizes and pool waits into `metrics` from now on.
    pub fn with_metrics(self, metrics: StoreMetrics) -> Self {
        let _ = self.metrics.set(metrics);
        self
    }

    async fn conn(&self) -> StoreResult<deadpool_postgres::Object> {
        queue::timed_get(&self.pool, &self.metrics).await
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<Vec<Row>> {
        let c = self.conn().await?;
        let stmt = c.prepare_cached(sql).await.map_err(pg_error)?;
        c.query(&stmt, params).await.map_err(pg_error)
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<u64> {
        let c = self.conn().await?;
        let stmt = c.prepare_cached(sql).await.map_err(pg_error)?;
        c.execute(&stmt, params).await.map_err(pg_error)
    }
}

const MEMBER_COLUMNS: &str = "id, mesh_id, pubkey, display_name, role, user_id, revoked_at, peer_grants, \
                              default_groups, role_tag, message_mode, created_at";

/// A member row. Grants that do not parse are an error, never "no grants" (which would
/// mean the permissive defaults).
fn member_from_row(r: &Row) -> StoreResult<Member> {
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

/// Inserts a new member row (operator API enrolment and invite redemption), on a pooled
/// connection or inside a transaction.
async fn insert_member(
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

fn groups_json(groups: &[Group]) -> Value {
    serde_json::to_value(groups).unwrap_or(Value::Array(vec![]))
}

#[async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn healthy(&self) -> bool {
        self.query("SELECT 1", &[]).await.is_ok()
    }

    async fn schema_version(&self) -> StoreResult<Option<i64>> {
        let exists = self
            .query(
                "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
                &[],
            )
            .await?;
        if !exists.first().is_some_and(|r| r.get::<_, bool>(0)) {
            return Ok(Some(0));
        }
        let rows = self
            .query(
                "SELECT coalesce(max(version), 0)::bigint FROM refinery_schema_history",
                &[],
            )
            .await?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0)))
    }

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

    async fn enqueue(&self, message: QueuedMessage) -> StoreResult<String> {
        let unresolved = match self.enqueuer.submit(message.clone()).await {
            Ok(Some(id)) => return Ok(id),
            // A concurrent send with the same key has not committed yet.
            Ok(None) => "a send with this client_message_id is in flight".to_string(),
            Err(StoreError::OutcomeUnknown(e)) => e,
            Err(e) => return Err(e),
        };
        // The commit may have happened: answer what the database says now, or that the
        // outcome is unknown (the client retries with the same client_message_id).
        match queue::resolve_send(self, &message).await {
            Ok(Some(id)) => Ok(id),
            Ok(None) | Err(_) => Err(StoreError::OutcomeUnknown(format!(
                "{unresolved}; the message may have been queued: retry with the same client_message_id"
            ))),
        }
    }

    async fn claim(&self, c: Claim<'_>) -> StoreResult<Vec<QueuedMessage>> {
        queue::claim(self, c).await
    }

    async fn mark_delivered(
        &self,
        _mesh_id: &str,
        member_id: &str,
        message: MessageRef<'_>,
    ) -> StoreResult<bool> {
        let item = match message {
            MessageRef::Broker(id) => queue::AckItem {
                member_id: member_id.into(),
                id: id.into(),
                by_client_id: false,
            },
            MessageRef::Client(id) => queue::AckItem {
                member_id: member_id.into(),
                id: id.into(),
                by_client_id: true,
            },
        };
        self.acker.submit(item).await
    }

    async fn sweep_expired(&self, before_ms: i64) -> StoreResult<u64> {
        queue::sweep(self, before_ms).await
    }

    async fn queue_depth(&self) -> StoreResult<u64> {
        let rows = self
            .query(
                "SELECT count(*) FROM message_queue WHERE delivered_at IS NULL",
                &[],
            )
            .await?;
        Ok(rows
            .first()
            .map(|r| r.get::<_, i64>(0).max(0) as u64)
            .unwrap_or(0))
    }

    async fn append_audit(
        &self,
        mesh_id: &str,
        event_type: &str,
        actor_member_id: Option<&str>,
        payload: Value,
        created_at: i64,
    ) -> StoreResult<()> {
        let item = audit::AuditItem {
            mesh_id: mesh_id.to_string(),
            event_type: event_type.to_string(),
            actor: actor_member_id.map(str::to_string),
            payload,
            created_at,
        };
        self.auditor.submit(item).await
    }

    async fn audit_entries(&self, mesh_id: &str) -> StoreResult<Vec<AuditEntry>> {
        audit::entries(self, mesh_id).await
    }

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

#[cfg(test)]
mod tests {
    #[test]
    fn schema_version_matches_the_newest_migration() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrator/migrations");
        let newest = std::fs::read_dir(dir)
            .expect("migrator/migrations exists")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix('V')?.split("__").next()?.parse::<i64>().ok())
            .max();
        assert_eq!(
            newest,
            Some(super::SCHEMA_VERSION),
            "bump SCHEMA_VERSION with every migration"
        );
    }
}
