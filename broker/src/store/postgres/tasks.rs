//! [`TaskStore`](crate::store::tasks::TaskStore) on PostgreSQL: table `task`. A claim and
//! a completion are each one conditional `UPDATE`, so concurrent claims on any number of
//! replicas have exactly one winner; creates serialise per mesh under a transaction-scoped
//! advisory lock, so the per-mesh bound is exact.

use async_trait::async_trait;
use serde_json::Value;
use tokio_postgres::Row;

use super::{PgStore, pg_error};
use crate::store::StoreResult;
use crate::store::tasks::{
    CreateTask, Task, TaskActor, TaskFilter, TaskStatus, TaskStore, TaskTally,
};

/// First key of the per-mesh advisory lock of creates (the second is the mesh id's hash).
const TASK_LOCK_CLASS: i32 = 0x7461_736b; // "task"

fn actor(r: &Row, member: &str, presence: &str, name: &str) -> Option<TaskActor> {
    let member_id: Option<String> = r.get(member);
    Some(TaskActor {
        member_id: member_id?,
        presence_id: r.get::<_, Option<String>>(presence).unwrap_or_default(),
        name: r.get::<_, Option<String>>(name).unwrap_or_default(),
    })
}

fn task_from_row(r: &Row) -> Task {
    Task {
        id: r.get("id"),
        mesh_id: r.get("mesh_id"),
        title: r.get("title"),
        assignee: r.get("assignee"),
        priority: r.get("priority"),
        tags: serde_json::from_value(r.get::<_, Value>("tags")).unwrap_or_default(),
        status: TaskStatus::parse(r.get("status")).unwrap_or(TaskStatus::Open),
        created_by: actor(
            r,
            "created_by_member",
            "created_by_presence",
            "created_by_name",
        ),
        claimed_by: actor(
            r,
            "claimed_by_member",
            "claimed_by_presence",
            "claimed_by_name",
        ),
        result: r.get("result"),
        created_at: r.get("created_at"),
        claimed_at: r.get("claimed_at"),
        completed_at: r.get("completed_at"),
    }
}

#[async_trait]
impl TaskStore for PgStore {
    async fn task_tally(&self, mesh_id: &str) -> StoreResult<TaskTally> {
        let rows = self
            .query(
                "SELECT status, count(*) FROM task WHERE mesh_id = $1 GROUP BY status",
                &[&mesh_id],
            )
            .await?;
        let mut tally = TaskTally::default();
        for r in rows {
            let n = r.get::<_, i64>(1).max(0) as u64;
            match TaskStatus::parse(r.get(0)) {
                Some(TaskStatus::Open) => tally.open = n,
                Some(TaskStatus::Claimed) => tally.claimed = n,
                Some(TaskStatus::Done) => tally.done = n,
                None => {}
            }
        }
        Ok(tally)
    }

    async fn create_task(&self, task: Task, max_per_mesh: usize) -> StoreResult<CreateTask> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(pg_error)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&TASK_LOCK_CLASS, &task.mesh_id],
        )
        .await
        .map_err(pg_error)?;
        if max_per_mesh > 0 {
            let count: i64 = tx
                .query_one(
                    "SELECT count(*) FROM task WHERE mesh_id = $1",
                    &[&task.mesh_id],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            if count >= max_per_mesh as i64 {
                // Room is made by the oldest done task; without one the mesh is full.
                let dropped = tx
                    .execute(
                        "DELETE FROM task WHERE id = (SELECT id FROM task WHERE mesh_id = $1 \
                         AND status = 'done' ORDER BY created_at, seq LIMIT 1)",
                        &[&task.mesh_id],
                    )
                    .await
                    .map_err(pg_error)?;
                if dropped == 0 {
                    return Ok(CreateTask::Full);
                }
            }
        }
        let created = task.created_by.as_ref();
        tx.execute(
            "INSERT INTO task (id, mesh_id, title, assignee, priority, tags, status, \
             created_by_member, created_by_presence, created_by_name, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &task.id,
                &task.mesh_id,
                &task.title,
                &task.assignee,
                &task.priority,
                &Value::from(task.tags.clone()),
                &task.status.as_str(),
                &created.map(|a| a.member_id.as_str()),
                &created.map(|a| a.presence_id.as_str()),
                &created.map(|a| a.name.as_str()),
                &task.created_at,
            ],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(CreateTask::Created)
    }

    async fn claim_task(
        &self,
        mesh_id: &str,
        task_id: &str,
        by: &TaskActor,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let n = self
            .execute(
                "UPDATE task SET status = 'claimed', claimed_by_member = $3, \
                 claimed_by_presence = $4, claimed_by_name = $5, claimed_at = $6 \
                 WHERE id = $1 AND mesh_id = $2 AND status = 'open'",
                &[
                    &task_id,
                    &mesh_id,
                    &by.member_id,
                    &by.presence_id,
                    &by.name,
                    &now_ms,
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn complete_task(
        &self,
        mesh_id: &str,
        task_id: &str,
        actor_member_id: &str,
        admin: bool,
        result: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let n = self
            .execute(
                "UPDATE task SET status = 'done', result = $4, completed_at = $5 \
                 WHERE id = $1 AND mesh_id = $2 \
                 AND ($6 OR claimed_by_member = $3 OR created_by_member = $3)",
                &[
                    &task_id,
                    &mesh_id,
                    &actor_member_id,
                    &result,
                    &now_ms,
                    &admin,
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn list_tasks(
        &self,
        mesh_id: &str,
        filter: &TaskFilter,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        let status = filter.status.map(TaskStatus::as_str);
        let rows = self
            .query(
                "SELECT * FROM task WHERE mesh_id = $1 \
                 AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR assignee = $3) \
                 ORDER BY created_at DESC, seq DESC LIMIT $4",
                &[&mesh_id, &status, &filter.assignee, &(limit as i64)],
            )
            .await?;
        Ok(rows.iter().map(task_from_row).collect())
    }
}
