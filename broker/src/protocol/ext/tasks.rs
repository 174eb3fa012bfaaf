//! Frames of tasks (extensions §3): `create_task`, `claim_task`, `complete_task`, `list_tasks`.
//!
//! Replies are serde types both ways (the broker encodes them, tests decode them); each
//! carries its `type` as a serde tag, so decoding a frame of another type fails.

use serde::{Deserialize, Serialize};

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &["create_task", "claim_task", "complete_task", "list_tasks"];

/// A client frame of this family. Fields the CLI may omit default, so the exact frames of
/// `claudemesh task` (no `_reqId` on claim and complete) decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TaskFrame {
    CreateTask(CreateTask),
    #[serde(rename_all = "camelCase")]
    ClaimTask {
        task_id: String,
    },
    #[serde(rename_all = "camelCase")]
    CompleteTask {
        task_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<String>,
    },
    ListTasks(ListTasks),
}

/// `create_task`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateTask {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    /// Free text; `normal` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// `list_tasks`: exact-match filters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListTasks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
}

/// `task_created{id, _reqId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "task_created")]
pub struct TaskCreated {
    pub id: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One row of a `task_list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRow {
    pub id: String,
    pub title: String,
    /// `null` when unassigned.
    pub assignee: Option<String>,
    /// The claimer's display name; `null` while open.
    pub claimed_by: Option<String>,
    /// `open`, `claimed` or `done`.
    pub status: String,
    pub priority: String,
    /// The creator's display name.
    pub created_by: Option<String>,
    pub tags: Vec<String>,
    /// ISO 8601 UTC with milliseconds.
    pub created_at: String,
}

/// `task_list{tasks, _reqId}`: newest first, at most 100 rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "task_list")]
pub struct TaskList {
    pub tasks: Vec<TaskRow>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_frames_decode_and_replies_carry_their_type() {
        let claim: TaskFrame =
            serde_json::from_str(r#"{"type":"claim_task","taskId":"t1"}"#).unwrap();
        assert_eq!(
            claim,
            TaskFrame::ClaimTask {
                task_id: "t1".into()
            }
        );
        let create: TaskFrame =
            serde_json::from_str(r#"{"type":"create_task","title":"x","_reqId":"r"}"#).unwrap();
        assert_eq!(
            create,
            TaskFrame::CreateTask(CreateTask {
                title: "x".into(),
                ..CreateTask::default()
            })
        );
        let reply = serde_json::to_value(TaskCreated {
            id: "i".into(),
            req_id: Some("r".into()),
        })
        .unwrap();
        assert_eq!(
            reply,
            serde_json::json!({"type":"task_created","id":"i","_reqId":"r"})
        );
    }
}
