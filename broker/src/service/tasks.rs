//! The operations of tasks (extensions §3): `create_task`, `claim_task`, `complete_task`,
//! `list_tasks`, without a transport.
//!
//! Every change is one step in the store ([`crate::store::tasks::TaskStore`]): a claim is
//! one conditional update, so of any number of concurrent claims on any number of replicas
//! exactly one wins and the others get [`TaskError::NotClaimable`]. **Ours:** a task is
//! completed only by its claimer, its creator or an admin; anyone else gets the reference's
//! miss ([`TaskError::NotFound`]). Every peer-controlled field is bounded by a setting.

use super::{Principal, ServiceCtx};
use crate::ids::{self, now_ms};
use crate::metrics::ReasonLabel;
use crate::store::tasks::{CreateTask, Task, TaskActor, TaskFilter, TaskStatus};
use crate::store::{Role, StoreError};

/// Rows of a `task_list`, at most.
pub const LIST_LIMIT: usize = 100;

/// A `create_task` as the service takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewTask {
    pub title: String,
    pub assignee: Option<String>,
    pub priority: Option<String>,
    pub tags: Vec<String>,
}

impl From<crate::protocol::ext::tasks::CreateTask> for NewTask {
    fn from(c: crate::protocol::ext::tasks::CreateTask) -> Self {
        NewTask {
            title: c.title,
            assignee: c.assignee,
            priority: c.priority,
            tags: c.tags,
        }
    }
}

/// Why a task request was refused. [`TaskError::code`] and [`TaskError::message`] are the
/// `error` frame's exact `code` and `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError {
    /// A field over its bound (the text says which).
    FieldTooLarge(String),
    /// The mesh holds `MAX_TASKS_PER_MESH` tasks and none is done.
    TooManyTasks { max: usize },
    /// The task is not open, or not in this mesh.
    NotClaimable,
    /// The task is not in this mesh, or the caller may not complete it.
    NotFound,
    /// The store failed.
    Unavailable(String),
}

impl TaskError {
    pub fn code(&self) -> &'static str {
        match self {
            TaskError::FieldTooLarge(_) => "field_too_large",
            TaskError::TooManyTasks { .. } => "too_many_tasks",
            TaskError::NotClaimable => "task_not_claimable",
            TaskError::NotFound => "task_not_found",
            TaskError::Unavailable(_) => "internal",
        }
    }

    /// The `reason` of `broker_task_requests_refused_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            TaskError::FieldTooLarge(_) => "field_too_large",
            TaskError::TooManyTasks { .. } => "too_many_tasks",
            TaskError::NotClaimable => "not_claimable",
            TaskError::NotFound => "not_found",
            TaskError::Unavailable(_) => "unavailable",
        }
    }

    /// The exact wire text.
    pub fn message(&self) -> String {
        match self {
            TaskError::FieldTooLarge(why) => why.clone(),
            TaskError::TooManyTasks { max } => format!(
                "this mesh holds {max} tasks, none of them done: complete some before creating more"
            ),
            TaskError::NotClaimable => "task is not open or does not exist".into(),
            TaskError::NotFound => "task not found in this mesh".into(),
            TaskError::Unavailable(e) => e.clone(),
        }
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for TaskError {}

fn unavailable(e: StoreError) -> TaskError {
    TaskError::Unavailable(e.to_string())
}

fn refused(ctx: &ServiceCtx, e: TaskError) -> TaskError {
    ctx.metrics()
        .task_requests_refused
        .get_or_create(&ReasonLabel {
            reason: e.metric_label(),
        })
        .inc();
    e
}

fn actor(p: &Principal) -> TaskActor {
    TaskActor {
        member_id: p.member.id.clone(),
        presence_id: p.presence_id.clone(),
        name: p.display_name.clone(),
    }
}

fn check_len(what: &str, value: &str, max: usize) -> Result<(), TaskError> {
    if value.len() > max {
        return Err(TaskError::FieldTooLarge(format!(
            "{what} is {} bytes, more than {max}",
            value.len()
        )));
    }
    Ok(())
}

fn check_new(ctx: &ServiceCtx, t: &NewTask) -> Result<(), TaskError> {
    let c = ctx.config();
    check_len("title", &t.title, c.max_task_title_bytes)?;
    check_len(
        "assignee",
        t.assignee.as_deref().unwrap_or(""),
        c.max_task_title_bytes,
    )?;
    check_len(
        "priority",
        t.priority.as_deref().unwrap_or(""),
        c.max_task_title_bytes,
    )?;
    if t.tags.len() > c.max_task_tags {
        return Err(TaskError::FieldTooLarge(format!(
            "{} tags, more than {}",
            t.tags.len(),
            c.max_task_tags
        )));
    }
    for tag in &t.tags {
        check_len("a tag", tag, c.max_task_tag_bytes)?;
    }
    Ok(())
}

/// `create_task`: the new task's id.
pub async fn create(ctx: &ServiceCtx, p: &Principal, req: NewTask) -> Result<String, TaskError> {
    check_new(ctx, &req).map_err(|e| refused(ctx, e))?;
    let mut task = Task::new(
        ids::random_id(32),
        &p.mesh.id,
        req.title,
        Some(actor(p)),
        now_ms(),
    );
    task.assignee = req.assignee;
    if let Some(priority) = req.priority {
        task.priority = priority;
    }
    task.tags = req.tags;
    let id = task.id.clone();
    let max = ctx.config().max_tasks_per_mesh;
    match ctx.store().create_task(task, max).await {
        Ok(CreateTask::Created) => Ok(id),
        Ok(CreateTask::Full) => Err(refused(ctx, TaskError::TooManyTasks { max })),
        Err(e) => Err(refused(ctx, unavailable(e))),
    }
}

/// `claim_task`: `open` → `claimed` by the caller; the mesh's tasks after it.
pub async fn claim(ctx: &ServiceCtx, p: &Principal, task_id: &str) -> Result<Vec<Task>, TaskError> {
    let won = ctx
        .store()
        .claim_task(&p.mesh.id, task_id, &actor(p), now_ms())
        .await
        .map_err(|e| refused(ctx, unavailable(e)))?;
    if !won {
        return Err(refused(ctx, TaskError::NotClaimable));
    }
    list_all(ctx, p).await
}

/// Whether the caller's member row, as the store has it now, is an admin's or the owner's.
async fn is_admin(ctx: &ServiceCtx, p: &Principal) -> Result<bool, TaskError> {
    let member = ctx
        .store()
        .member(&p.mesh.id, &p.member.id)
        .await
        .map_err(unavailable)?;
    Ok(member.is_some_and(|m| {
        m.role == Role::Admin
            || (p.mesh.owner_user_id.is_some() && m.user_id == p.mesh.owner_user_id)
    }))
}

/// `complete_task`: any status → `done`, by its claimer, its creator or an admin; the
/// mesh's tasks after it.
pub async fn complete(
    ctx: &ServiceCtx,
    p: &Principal,
    task_id: &str,
    result: Option<&str>,
) -> Result<Vec<Task>, TaskError> {
    if let Some(r) = result {
        check_len("result", r, ctx.config().max_task_result_bytes).map_err(|e| refused(ctx, e))?;
    }
    let admin = is_admin(ctx, p).await.map_err(|e| refused(ctx, e))?;
    let done = ctx
        .store()
        .complete_task(&p.mesh.id, task_id, &p.member.id, admin, result, now_ms())
        .await
        .map_err(|e| refused(ctx, unavailable(e)))?;
    if !done {
        return Err(refused(ctx, TaskError::NotFound));
    }
    list_all(ctx, p).await
}

/// `list_tasks`: newest first, at most [`LIST_LIMIT`], with exact-match filters (a status
/// that is none of `open`/`claimed`/`done` matches nothing).
pub async fn list(
    ctx: &ServiceCtx,
    p: &Principal,
    status: Option<&str>,
    assignee: Option<&str>,
) -> Result<Vec<Task>, TaskError> {
    let status = match status {
        None => None,
        Some(s) => match TaskStatus::parse(s) {
            Some(s) => Some(s),
            None => return Ok(Vec::new()),
        },
    };
    let filter = TaskFilter {
        status,
        assignee: assignee.map(str::to_string),
    };
    ctx.store()
        .list_tasks(&p.mesh.id, &filter, LIST_LIMIT)
        .await
        .map_err(|e| refused(ctx, unavailable(e)))
}

async fn list_all(ctx: &ServiceCtx, p: &Principal) -> Result<Vec<Task>, TaskError> {
    list(ctx, p, None, None).await
}
