//! Tasks (extensions §3): create, claim exactly once, complete, list.
//!
//! The capability trait, its types and its in-memory implementation; the PostgreSQL one is
//! in `postgres/tasks.rs`. Contract suite: `tests/store_contract.rs`.
//!
//! # Guarantees every backend gives
//!
//! - **One claimer:** [`TaskStore::claim_task`] is one conditional step (`open` → `claimed`):
//!   of any number of concurrent claims of one task, on any number of replicas, exactly one
//!   returns `true`.
//! - **Complete by whom:** [`TaskStore::complete_task`] changes the task only when the
//!   actor is its claimer, its creator or an admin, in the same step as the change.
//! - **Bounded:** a mesh holds at most the `max_per_mesh` given to
//!   [`TaskStore::create_task`]; at the bound the oldest `done` task makes room, and without
//!   one the create is refused ([`CreateTask::Full`]).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::StoreResult;
use super::memory::MemoryStore;

/// `open` → `claimed` → `done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    Open,
    Claimed,
    Done,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Open => "open",
            TaskStatus::Claimed => "claimed",
            TaskStatus::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<TaskStatus> {
        match s {
            "open" => Some(TaskStatus::Open),
            "claimed" => Some(TaskStatus::Claimed),
            "done" => Some(TaskStatus::Done),
            _ => None,
        }
    }
}

/// Who acts on a task: the member, the presence it acts through and its display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskActor {
    pub member_id: String,
    pub presence_id: String,
    pub name: String,
}

/// One task as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    pub mesh_id: String,
    pub title: String,
    pub assignee: Option<String>,
    pub priority: String,
    pub tags: Vec<String>,
    pub status: TaskStatus,
    pub created_by: Option<TaskActor>,
    pub claimed_by: Option<TaskActor>,
    pub result: Option<String>,
    pub created_at: i64,
    pub claimed_at: Option<i64>,
    pub completed_at: Option<i64>,
}

impl Task {
    /// A new `open` task.
    pub fn new(
        id: String,
        mesh_id: &str,
        title: String,
        created_by: Option<TaskActor>,
        created_at: i64,
    ) -> Task {
        Task {
            id,
            mesh_id: mesh_id.to_string(),
            title,
            assignee: None,
            priority: "normal".into(),
            tags: Vec::new(),
            status: TaskStatus::Open,
            created_by,
            claimed_by: None,
            result: None,
            created_at,
            claimed_at: None,
            completed_at: None,
        }
    }
}

/// What [`TaskStore::create_task`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateTask {
    Created,
    /// The mesh holds `max_per_mesh` tasks and none is `done`: nothing was written.
    Full,
}

/// Exact-match filters of [`TaskStore::list_tasks`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub assignee: Option<String>,
}

/// How many tasks of a mesh are in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskTally {
    pub open: u64,
    pub claimed: u64,
    pub done: u64,
}

/// Tasks (extensions §3): create, claim exactly once, complete, list.
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// How many of the mesh's tasks are open, claimed and done (one query; `mesh_info`).
    async fn task_tally(&self, mesh_id: &str) -> StoreResult<TaskTally>;
    /// Stores a new task; at `max_per_mesh` tasks the oldest `done` one is dropped first
    /// (`0`: no bound).
    async fn create_task(&self, task: Task, max_per_mesh: usize) -> StoreResult<CreateTask>;
    /// `open` → `claimed` by `by`, in one conditional step; `false` when the task is not
    /// open or not in this mesh.
    async fn claim_task(
        &self,
        mesh_id: &str,
        task_id: &str,
        by: &TaskActor,
        now_ms: i64,
    ) -> StoreResult<bool>;
    /// Any status → `done` with `result`, if `actor_member_id` claimed or created it or
    /// `admin`; `false` when the task is not in this mesh or the actor may not.
    async fn complete_task(
        &self,
        mesh_id: &str,
        task_id: &str,
        actor_member_id: &str,
        admin: bool,
        result: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<bool>;
    /// The mesh's tasks matching `filter`, newest first, at most `limit`.
    async fn list_tasks(
        &self,
        mesh_id: &str,
        filter: &TaskFilter,
        limit: usize,
    ) -> StoreResult<Vec<Task>>;
}

/// What the in-memory backend keeps for this family.
#[derive(Debug, Default)]
pub struct MemoryState {
    inner: Mutex<MemoryTasks>,
}

#[derive(Debug, Default)]
struct MemoryTasks {
    /// Creation order, so tasks created within one millisecond keep their order.
    next_seq: u64,
    /// mesh id → task id → (creation sequence, task).
    meshes: HashMap<String, HashMap<String, (u64, Task)>>,
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryTasks> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything of a deleted mesh (`MemoryStore::delete_mesh`, as the PostgreSQL
    /// delete removes every row with its `mesh_id`).
    pub(super) fn forget_mesh(&self, mesh_id: &str) {
        self.lock().meshes.remove(mesh_id);
    }
}

/// Newest first: by creation time, then creation order.
fn newest_first(a: &(u64, Task), b: &(u64, Task)) -> std::cmp::Ordering {
    b.1.created_at.cmp(&a.1.created_at).then(b.0.cmp(&a.0))
}

#[async_trait]
impl TaskStore for MemoryStore {
    async fn task_tally(&self, mesh_id: &str) -> StoreResult<TaskTally> {
        let all = self.tasks.lock();
        let mut tally = TaskTally::default();
        for (_, t) in all.meshes.get(mesh_id).into_iter().flat_map(|m| m.values()) {
            match t.status {
                TaskStatus::Open => tally.open += 1,
                TaskStatus::Claimed => tally.claimed += 1,
                TaskStatus::Done => tally.done += 1,
            }
        }
        Ok(tally)
    }

    async fn create_task(&self, task: Task, max_per_mesh: usize) -> StoreResult<CreateTask> {
        let mut all = self.tasks.lock();
        all.next_seq += 1;
        let seq = all.next_seq;
        let mesh = all.meshes.entry(task.mesh_id.clone()).or_default();
        if max_per_mesh > 0 && mesh.len() >= max_per_mesh {
            let oldest_done = mesh
                .values()
                .filter(|t| t.1.status == TaskStatus::Done)
                .min_by(|a, b| newest_first(b, a))
                .map(|t| t.1.id.clone());
            match oldest_done {
                Some(id) => {
                    mesh.remove(&id);
                }
                None => return Ok(CreateTask::Full),
            }
        }
        mesh.insert(task.id.clone(), (seq, task));
        Ok(CreateTask::Created)
    }

    async fn claim_task(
        &self,
        mesh_id: &str,
        task_id: &str,
        by: &TaskActor,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let mut all = self.tasks.lock();
        match all.meshes.get_mut(mesh_id).and_then(|m| m.get_mut(task_id)) {
            Some((_, t)) if t.status == TaskStatus::Open => {
                t.status = TaskStatus::Claimed;
                t.claimed_by = Some(by.clone());
                t.claimed_at = Some(now_ms);
                Ok(true)
            }
            _ => Ok(false),
        }
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
        let mut all = self.tasks.lock();
        let Some((_, t)) = all.meshes.get_mut(mesh_id).and_then(|m| m.get_mut(task_id)) else {
            return Ok(false);
        };
        let is = |a: &Option<TaskActor>| a.as_ref().is_some_and(|a| a.member_id == actor_member_id);
        if !(admin || is(&t.claimed_by) || is(&t.created_by)) {
            return Ok(false);
        }
        t.status = TaskStatus::Done;
        t.result = result.map(str::to_string);
        t.completed_at = Some(now_ms);
        Ok(true)
    }

    async fn list_tasks(
        &self,
        mesh_id: &str,
        filter: &TaskFilter,
        limit: usize,
    ) -> StoreResult<Vec<Task>> {
        let all = self.tasks.lock();
        let mut out: Vec<(u64, Task)> = all
            .meshes
            .get(mesh_id)
            .map(|m| {
                m.values()
                    .filter(|(_, t)| filter.status.is_none_or(|s| t.status == s))
                    .filter(|(_, t)| {
                        filter
                            .assignee
                            .as_deref()
                            .is_none_or(|a| t.assignee.as_deref() == Some(a))
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(newest_first);
        out.truncate(limit);
        Ok(out.into_iter().map(|(_, t)| t).collect())
    }
}
