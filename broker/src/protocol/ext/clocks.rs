//! Frames of simulation clocks (extensions §6): `set_clock`, `pause_clock`, `resume_clock`, `get_clock`.
//!
//! Replies and the `tick` push are serde types both ways (the broker encodes them, tests
//! decode them); the reply carries its `type` as a serde tag.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::protocol::Priority;
use crate::protocol::frames::tag;

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &["set_clock", "pause_clock", "resume_clock", "get_clock"];

/// Slowest and fastest speed; 0 or anything that is not a number is 1.
pub const MIN_SPEED: f64 = 1.0;
pub const MAX_SPEED: f64 = 100.0;

/// A client frame of this family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClockFrame {
    SetClock {
        /// Any JSON: coerced with [`clamp_speed`].
        #[serde(default)]
        speed: Value,
    },
    PauseClock {},
    ResumeClock {},
    GetClock {},
}

/// The speed as the reference coerces it: a number (or numeric string) clamped to
/// 1…100; 0, negative or garbage is 1; fractions are kept.
pub fn clamp_speed(v: &Value) -> f64 {
    let n = match v {
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        Value::String(s) => s.trim().parse::<f64>().unwrap_or(0.0),
        Value::Bool(true) => 1.0,
        _ => 0.0,
    };
    if !n.is_finite() || n <= 0.0 {
        return MIN_SPEED;
    }
    n.clamp(MIN_SPEED, MAX_SPEED)
}

/// `clock_status{speed, paused, tick, simTime, startedAt, _reqId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "clock_status", rename_all = "camelCase")]
pub struct ClockStatus {
    pub speed: f64,
    pub paused: bool,
    pub tick: i64,
    /// The simulated time, ISO 8601 UTC with milliseconds.
    pub sim_time: String,
    /// The real creation time, ISO 8601 UTC with milliseconds.
    pub started_at: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `eventData` of a `tick`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TickData {
    pub tick: i64,
    /// ISO 8601 UTC with milliseconds.
    pub sim_time: String,
    pub speed: f64,
}

/// `push{subtype:"system", event:"tick", eventData:{tick, simTime, speed}}`, the system
/// push envelope of protocol §4.2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TickPush {
    #[serde(rename = "type")]
    pub kind: tag::Push,
    pub subtype: tag::System,
    /// Always `tick`.
    pub event: String,
    pub event_data: TickData,
    /// Derived from the mesh, the clock and the tick number: a tick emitted again (a
    /// failover between its push and its commit) has the same id, and clients
    /// de-duplicate by it.
    pub message_id: String,
    pub mesh_id: String,
    /// Always `"system"`.
    pub sender_pubkey: String,
    /// Always `low`.
    pub priority: Priority,
    pub nonce: String,
    pub ciphertext: String,
    pub created_at: String,
}

impl TickPush {
    pub fn new(mesh_id: &str, message_id: String, data: TickData, created_at_ms: i64) -> Self {
        TickPush {
            kind: tag::Push,
            subtype: tag::System,
            event: "tick".into(),
            event_data: data,
            message_id,
            mesh_id: mesh_id.to_string(),
            sender_pubkey: "system".into(),
            priority: Priority::Low,
            nonce: String::new(),
            ciphertext: String::new(),
            created_at: crate::ids::iso8601_ms(created_at_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn speed_is_coerced_and_clamped() {
        for (v, want) in [
            (json!(0), 1.0),
            (json!(-3), 1.0),
            (json!("fast"), 1.0),
            (json!(null), 1.0),
            (json!(2.5), 2.5),
            (json!("10"), 10.0),
            (json!(1000), 100.0),
            (json!(0.5), 1.0),
        ] {
            assert_eq!(clamp_speed(&v), want, "{v}");
        }
    }

    #[test]
    fn frames_decode_and_the_tick_has_the_system_shape() {
        let f: ClockFrame =
            serde_json::from_str(r#"{"type":"set_clock","speed":5,"_reqId":"r"}"#).unwrap();
        assert_eq!(f, ClockFrame::SetClock { speed: json!(5) });
        let f: ClockFrame = serde_json::from_str(r#"{"type":"get_clock"}"#).unwrap();
        assert_eq!(f, ClockFrame::GetClock {});
        let data = TickData {
            tick: 3,
            sim_time: crate::ids::iso8601_ms(0),
            speed: 2.0,
        };
        let v = serde_json::to_value(TickPush::new("m", "id".into(), data, 0)).unwrap();
        assert_eq!(v["type"], "push");
        assert_eq!(v["subtype"], "system");
        assert_eq!(v["event"], "tick");
        assert_eq!(
            v["eventData"],
            json!({"tick":3,"simTime":"1970-01-01T00:00:00.000Z","speed":2.0})
        );
        assert_eq!(v["senderPubkey"], "system");
        assert_eq!(v["priority"], "low");
        assert_eq!(
            (v["nonce"].as_str(), v["ciphertext"].as_str()),
            (Some(""), Some(""))
        );
    }
}
