//! Frames of scheduled messages and reminders (extensions §5): `schedule`, `list_scheduled`, `cancel_scheduled`.
//!
//! Replies are serde types both ways (the broker encodes them, tests decode them); each
//! carries its `type` as a serde tag, so decoding a frame of another type fails. Times are
//! epoch milliseconds (numbers), unlike every other family.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &["schedule", "list_scheduled", "cancel_scheduled"];

/// A client frame of this family. Fields the CLI may omit default (`claudemesh remind`
/// sends `deliverAt:0` with a cron and never a `subtype`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ScheduleFrame {
    Schedule(Schedule),
    ListScheduled {},
    #[serde(rename_all = "camelCase")]
    CancelScheduled {
        #[serde(default)]
        scheduled_id: String,
    },
}

/// `schedule`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// A target spec (protocol §4.3).
    #[serde(default)]
    pub to: String,
    /// The plaintext.
    #[serde(default)]
    pub message: String,
    /// Epoch ms; ignored with `cron`; in the past: fire at once. A number, or a numeric
    /// string; anything else counts as 0.
    #[serde(default, deserialize_with = "lenient_ms")]
    pub deliver_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtype: Option<String>,
    /// Five fields, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The CLI sets `true` with a cron; the broker goes by `cron` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurring: Option<bool>,
}

fn lenient_ms<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .unwrap_or(0),
        Value::String(s) => s.trim().parse::<f64>().map(|f| f as i64).unwrap_or(0),
        _ => 0,
    })
}

/// `scheduled_ack{scheduledId, deliverAt, cron?, _reqId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "scheduled_ack", rename_all = "camelCase")]
pub struct ScheduledAck {
    pub scheduled_id: String,
    /// Epoch ms; for a cron its next fire.
    pub deliver_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One entry of a `scheduled_list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledRow {
    pub id: String,
    pub to: String,
    pub message: String,
    /// Epoch ms of the next fire.
    pub deliver_at: i64,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Fires so far (cron entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_count: Option<i64>,
    /// **Beyond:** the entry's subtype, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtype: Option<String>,
}

/// `scheduled_list{messages, _reqId}`: the caller's member's active entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "scheduled_list")]
pub struct ScheduledList {
    pub messages: Vec<ScheduledRow>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `cancel_scheduled_ack{scheduledId, ok, _reqId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename = "cancel_scheduled_ack",
    rename_all = "camelCase"
)]
pub struct CancelScheduledAck {
    pub scheduled_id: String,
    pub ok: bool,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_frames_decode() {
        let f: ScheduleFrame = serde_json::from_str(
            r#"{"type":"schedule","to":"abc","message":"hi","deliverAt":0,"cron":"*/5 * * * *","recurring":true,"_reqId":"r1"}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            ScheduleFrame::Schedule(Schedule {
                to: "abc".into(),
                message: "hi".into(),
                deliver_at: 0,
                subtype: None,
                cron: Some("*/5 * * * *".into()),
                recurring: Some(true),
            })
        );
        let f: ScheduleFrame = serde_json::from_str(
            r#"{"type":"schedule","to":"*","message":"m","deliverAt":"17.5e2"}"#,
        )
        .unwrap();
        assert!(matches!(
            f,
            ScheduleFrame::Schedule(Schedule {
                deliver_at: 1750,
                ..
            })
        ));
        let f: ScheduleFrame = serde_json::from_str(r#"{"type":"list_scheduled"}"#).unwrap();
        assert_eq!(f, ScheduleFrame::ListScheduled {});
        let f: ScheduleFrame =
            serde_json::from_str(r#"{"type":"cancel_scheduled","scheduledId":"x"}"#).unwrap();
        assert_eq!(
            f,
            ScheduleFrame::CancelScheduled {
                scheduled_id: "x".into()
            }
        );
    }

    #[test]
    fn replies_have_the_wire_shape() {
        let ack = ScheduledAck {
            scheduled_id: "s".into(),
            deliver_at: 5,
            cron: None,
            req_id: Some("r".into()),
        };
        assert_eq!(
            serde_json::to_value(&ack).unwrap(),
            serde_json::json!({"type":"scheduled_ack","scheduledId":"s","deliverAt":5,"_reqId":"r"})
        );
        let back: Result<CancelScheduledAck, _> =
            serde_json::from_value(serde_json::to_value(&ack).unwrap());
        assert!(back.is_err(), "the type tag is checked");
    }
}
