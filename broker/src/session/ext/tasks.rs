//! The WebSocket adapter of tasks (extensions §3): `create_task`, `claim_task`,
//! `complete_task`, `list_tasks`.
//!
//! Every implemented request gets its typed reply (§0.2): `task_created`, or the mesh's
//! `task_list` after a claim or a completion; refusals are `error` frames with the spec's
//! codes. `_reqId` is echoed when the frame carried one (the CLI sends none on claim and
//! complete).

use crate::ids;
use crate::protocol;
use crate::protocol::ext::tasks::{TaskCreated, TaskFrame, TaskList, TaskRow};
use crate::service::tasks::{self, TaskError};
use crate::session::Session;
use crate::store::tasks::Task;

/// One row as the CLI reads it: display names, ISO times.
fn row(t: Task) -> TaskRow {
    TaskRow {
        id: t.id,
        title: t.title,
        assignee: t.assignee,
        claimed_by: t.claimed_by.map(|a| a.name),
        status: t.status.as_str().to_string(),
        priority: t.priority,
        created_by: t.created_by.map(|a| a.name),
        tags: t.tags,
        created_at: ids::iso8601_ms(t.created_at),
    }
}

fn list_frame(tasks: Vec<Task>, req_id: Option<&str>) -> TaskList {
    TaskList {
        tasks: tasks.into_iter().map(row).collect(),
        req_id: req_id.map(str::to_string),
    }
}

/// Handles one frame whose `type` is in [`crate::protocol::ext::tasks::TYPES`].
pub(in crate::session) async fn handle(
    s: &mut Session,
    kind: &str,
    text: &[u8],
    req_id: Option<&str>,
) {
    let frame: TaskFrame = match serde_json::from_slice(text) {
        Ok(f) => f,
        Err(e) => return s.reply_error("malformed", &format!("invalid {kind}: {e}"), req_id),
    };
    let (svc, p) = (&s.svc, &s.attached.principal);
    // A backend failure is answered only to a request that carried a `_reqId` (§0.4): an
    // uncorrelated `error` would release some other pending request of the CLI (§0.2).
    let refuse = |s: &Session, e: TaskError| match (&e, req_id) {
        (TaskError::Unavailable(why), None) => {
            tracing::warn!(kind, error = %why, "request failed; no _reqId to answer");
        }
        _ => s.reply_error(e.code(), &e.message(), req_id),
    };
    match frame {
        TaskFrame::CreateTask(req) => match tasks::create(svc, p, req.into()).await {
            Ok(id) => s.reply(protocol::encode(&TaskCreated {
                id,
                req_id: req_id.map(str::to_string),
            })),
            Err(e) => refuse(s, e),
        },
        TaskFrame::ClaimTask { task_id } => match tasks::claim(svc, p, &task_id).await {
            Ok(all) => s.reply(protocol::encode(&list_frame(all, req_id))),
            Err(e) => refuse(s, e),
        },
        TaskFrame::CompleteTask { task_id, result } => {
            match tasks::complete(svc, p, &task_id, result.as_deref()).await {
                Ok(all) => s.reply(protocol::encode(&list_frame(all, req_id))),
                Err(e) => refuse(s, e),
            }
        }
        TaskFrame::ListTasks(f) => {
            match tasks::list(svc, p, f.status.as_deref(), f.assignee.as_deref()).await {
                Ok(all) => s.reply(protocol::encode(&list_frame(all, req_id))),
                Err(e) => refuse(s, e),
            }
        }
    }
}
