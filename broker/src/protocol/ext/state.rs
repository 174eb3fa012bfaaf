//! Frames of shared state (extensions §1): `set_state`, `get_state`, `list_state`.
//!
//! Replies are serde types both ways (the broker encodes them, tests decode them); each
//! carries its `type` as a serde tag, so decoding a frame of another type fails.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &["set_state", "get_state", "list_state"];

/// A client frame of this family. Fields the CLI may omit default, so that a frame without
/// them decodes and is refused by the service with a clear error instead of `malformed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StateFrame {
    /// `set_state{key, value}`: the CLI sends no `_reqId`, and gets no reply.
    SetState {
        #[serde(default)]
        key: String,
        /// Any JSON but `null` (a missing value decodes as `null`).
        #[serde(default)]
        value: Value,
    },
    GetState {
        #[serde(default)]
        key: String,
    },
    ListState {},
}

/// One key as replies show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateRow {
    pub key: String,
    pub value: Value,
    /// The writer member's display name (`"unknown"` when it had none).
    pub updated_by: String,
    /// ISO 8601 UTC with milliseconds.
    pub updated_at: String,
}

/// `state_result{key, value, updatedBy, updatedAt, _reqId}`, the reply to `get_state`.
/// A miss is `key:""` (**Beyond**: the CLI prints "(not set)"), `value:null`,
/// `updatedBy:""`, `updatedAt:""`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "state_result", rename_all = "camelCase")]
pub struct StateResult {
    pub key: String,
    pub value: Value,
    pub updated_by: String,
    pub updated_at: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

impl StateResult {
    /// The reply for `row` (`None`: not set).
    pub fn new(row: Option<StateRow>, req_id: Option<&str>) -> Self {
        let row = row.unwrap_or(StateRow {
            key: String::new(),
            value: Value::Null,
            updated_by: String::new(),
            updated_at: String::new(),
        });
        StateResult {
            key: row.key,
            value: row.value,
            updated_by: row.updated_by,
            updated_at: row.updated_at,
            req_id: req_id.map(str::to_string),
        }
    }
}

/// **Beyond:** `state_value{key, state, _reqId}` after every `state_result`, for the
/// daemon (which ignores `state_result`); `state` is `null` when the key is not set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "state_value")]
pub struct StateValue {
    pub key: String,
    pub state: Option<StateRow>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `state_list{entries, _reqId}`: every key of the mesh, ordered by key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "state_list")]
pub struct StateList {
    pub entries: Vec<StateRow>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `state_change{key, value, updatedBy}`, pushed to every other presence of the mesh (no
/// `_reqId`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "state_change", rename_all = "camelCase")]
pub struct StateChange {
    pub key: String,
    pub value: Value,
    pub updated_by: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_cli_frames_decode_and_replies_have_the_spec_shapes() {
        let set: StateFrame =
            serde_json::from_value(json!({"type": "set_state", "key": "k", "value": {"a": 1}}))
                .unwrap();
        assert_eq!(
            set,
            StateFrame::SetState {
                key: "k".into(),
                value: json!({"a": 1})
            }
        );
        let list: StateFrame =
            serde_json::from_value(json!({"type": "list_state", "_reqId": "r"})).unwrap();
        assert_eq!(list, StateFrame::ListState {});
        let miss = serde_json::to_value(StateResult::new(None, Some("r"))).unwrap();
        assert_eq!(
            miss,
            json!({"type": "state_result", "key": "", "value": null, "updatedBy": "",
                   "updatedAt": "", "_reqId": "r"})
        );
        let value = serde_json::to_value(StateValue {
            key: "k".into(),
            state: None,
            req_id: None,
        })
        .unwrap();
        assert_eq!(
            value,
            json!({"type": "state_value", "key": "k", "state": null})
        );
        assert!(serde_json::from_value::<StateList>(miss).is_err());
    }
}
