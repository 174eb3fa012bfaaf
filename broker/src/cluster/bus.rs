//! Fan-out between replicas.
//!
//! # Semantics every backend gives
//!
//! - **Scope:** [`Bus::publish`] reaches every replica that has called [`Bus::subscribe`] for
//!   the mesh (including the publisher), which hands the event to its hub.
//! - **At-most-once:** an event can be lost (a Redis reconnect, a replica restart). Nothing
//!   that was acknowledged to a client may depend on an event arriving: direct messages are
//!   in the [`crate::store::Store`] first, and a [`MeshEvent::Doorbell`] only says "drain now".
//!   Replicas re-drain their sessions after any reconnect of the bus.
//! - **Order:** events published by one replica on one mesh arrive in publish order.
//! - **Encoding once:** a [`MeshEvent::Deliver`] carries the already-encoded frame as shared
//!   [`Bytes`]; every receiving socket writes the same buffer.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

pub use crate::lifecycle::AfterClose;
use crate::protocol::Priority;

/// An event for the replicas that hold sockets of one mesh.
///
/// The serde derive *is* the wire format (see [`wire`]): a variant is tagged by `k`, its
/// fields have the short names below, and a `Deliver`'s frame travels after the header as
/// raw bytes. Adding an event is adding a variant here and its arm in the dispatcher.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum MeshEvent {
    /// Push `frame` to these presences if connected here. `priority: None` is a system event
    /// and is never held back by a busy status.
    #[serde(rename = "d")]
    Deliver {
        #[serde(rename = "p", with = "shared_ids", default = "shared_ids::empty")]
        presence_ids: Arc<[String]>,
        #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
        priority: Option<Priority>,
        /// Never inside the header: the raw frame follows it on the wire.
        #[serde(skip)]
        frame: Bytes,
        /// The W3C traceparent of the publishing span, so the receivers' `push` span joins
        /// the sender's trace. Never inside the header either: the envelope's `t` carries
        /// it, and the bus sets this field from it on receipt (and from the publishing span
        /// on the local hand-off), so publishers leave it `None` and the wire format is
        /// that of the previous release.
        #[serde(skip)]
        trace: Option<String>,
    },
    /// Queued direct messages are waiting for this member: drain its connections.
    #[serde(rename = "b")]
    Doorbell {
        #[serde(rename = "m")]
        member_id: String,
    },
    /// A direct message for this member was committed: the replica holding one of its
    /// connections pushes `frame` (the queued row's `push`) at once, without a claim, and
    /// records the lease after the push. On the wire it *is* a [`MeshEvent::Doorbell`]
    /// (`k:"b"`, `m`) with the fields of [`DirectHeader`] and the frame after the header
    /// ([`wire`] writes and reads it by hand, hence `skip`): a replica of the previous
    /// release reads a doorbell, ignores the rest and drains.
    #[serde(skip)]
    Direct {
        member_id: String,
        message: DirectHeader,
        frame: Bytes,
    },
    /// The mesh's members changed (enrolment, grants, ban): drop cached member rows.
    #[serde(rename = "u")]
    MembersChanged,
    /// Close these connections (by connection id, so a reattached presence is not hit).
    #[serde(rename = "c")]
    Close {
        #[serde(rename = "p", default)]
        conn_ids: Vec<String>,
        code: u16,
        #[serde(default)]
        reason: String,
        #[serde(rename = "end", with = "end_flag", default = "end_flag::grace")]
        after: AfterClose,
    },
    /// A `state_change` push (extensions §1) for these presences if connected here, like a
    /// system `Deliver`, unless this replica already pushed a higher `version` of the same
    /// key (`service::state::ChangeOrder`): concurrent writers on several replicas publish
    /// in any order, and the version (the store's commit order of the key) keeps every
    /// presence's last `state_change` equal to the stored value.
    #[serde(rename = "s")]
    StateChange {
        #[serde(rename = "p", with = "shared_ids", default = "shared_ids::empty")]
        presence_ids: Arc<[String]>,
        key: String,
        #[serde(rename = "v")]
        version: i64,
        /// Never inside the header: the raw frame follows it on the wire.
        #[serde(skip)]
        frame: Bytes,
    },
    /// A status hook (`POST /hook/set-status`) for this presence, received by another
    /// replica: the replica holding its socket applies it (a hook never clears `dnd`).
    #[serde(rename = "h")]
    HookStatus {
        #[serde(rename = "p")]
        presence_id: String,
        #[serde(rename = "s")]
        status: crate::protocol::Status,
    },
}

/// What a [`MeshEvent::Direct`] says of its message beyond the frame, in the doorbell's
/// header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectHeader {
    /// The broker's message id.
    #[serde(rename = "i")]
    pub id: String,
    /// The session key it is addressed to (`None`: any connection of the member).
    #[serde(rename = "sk", default, skip_serializing_if = "Option::is_none")]
    pub session_key: Option<String>,
    #[serde(rename = "r")]
    pub priority: Priority,
    /// The sender's `client_message_id`.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The send's trace context (the queued row's `trace_context`).
    #[serde(rename = "tc", default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// When it was queued (ms epoch).
    #[serde(rename = "at", default)]
    pub created_at: i64,
}

impl MeshEvent {
    /// A short name for logs and spans.
    pub fn kind(&self) -> &'static str {
        match self {
            MeshEvent::Deliver { .. } => "deliver",
            MeshEvent::Doorbell { .. } => "doorbell",
            MeshEvent::Direct { .. } => "direct",
            MeshEvent::Close { .. } => "close",
            MeshEvent::MembersChanged => "members_changed",
            MeshEvent::HookStatus { .. } => "hook_status",
            MeshEvent::StateChange { .. } => "state_change",
        }
    }

    /// The raw frame that travels after the header (empty for all but `Deliver`,
    /// `StateChange` and `Direct`).
    pub fn frame(&self) -> Bytes {
        match self {
            MeshEvent::Deliver { frame, .. } => frame.clone(),
            MeshEvent::StateChange { frame, .. } => frame.clone(),
            MeshEvent::Direct { frame, .. } => frame.clone(),
            _ => Bytes::new(),
        }
    }

    /// Sets the trace context a `Deliver` hands to its receivers' `push` span (see its
    /// `trace` field); other events carry none.
    pub fn set_trace(&mut self, traceparent: Option<String>) {
        if let MeshEvent::Deliver { trace, .. } = self {
            *trace = traceparent;
        }
    }
}

/// `Arc<[String]>` as a JSON array (serde's `rc` feature is not enabled).
mod shared_ids {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(ids: &Arc<[String]>, s: S) -> Result<S::Ok, S::Error> {
        ids[..].serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<[String]>, D::Error> {
        Ok(Vec::<String>::deserialize(d)?.into())
    }

    pub fn empty() -> Arc<[String]> {
        Arc::from(Vec::new())
    }
}

/// [`AfterClose`] as the boolean `end` of the wire format.
mod end_flag {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::AfterClose;

    pub fn serialize<S: Serializer>(after: &AfterClose, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(*after == AfterClose::End)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<AfterClose, D::Error> {
        Ok(if bool::deserialize(d)? {
            AfterClose::End
        } else {
            AfterClose::Grace
        })
    }

    pub fn grace() -> AfterClose {
        AfterClose::Grace
    }
}

/// The one encoding of a bus message, derived from [`MeshEvent`]'s serde attributes and
/// used by every backend (the memory bus round-trips each event through it, so a variant
/// that does not survive the wire fails in single-node tests too).
///
/// A message is one compact JSON header line (`o` origin replica, `k` the variant and its
/// fields, `t` the publisher's W3C traceparent), `\n`, then the raw frame bytes: a frame is
/// encoded once by its publisher and never re-escaped. The field names are those of the
/// earlier hand-written header, so replicas of either version understand each other during
/// a rolling upgrade.
pub mod wire {
    use bytes::Bytes;
    use serde::{Deserialize, Serialize};

    use super::{DirectHeader, MeshEvent};

    /// A decoded bus message.
    #[derive(Debug)]
    pub struct Envelope {
        /// The replica (instance id) that published it.
        pub origin: String,
        /// W3C traceparent of the publishing span, so the trace continues on this side.
        pub trace: Option<String>,
        pub event: MeshEvent,
    }

    #[derive(Serialize)]
    struct HeaderOut<'a> {
        o: &'a str,
        #[serde(flatten)]
        event: &'a MeshEvent,
        #[serde(skip_serializing_if = "Option::is_none")]
        t: Option<&'a str>,
    }

    #[derive(Deserialize)]
    struct HeaderIn {
        o: String,
        #[serde(flatten)]
        event: MeshEvent,
        #[serde(default)]
        t: Option<String>,
    }

    /// A [`MeshEvent::Direct`]'s header: a doorbell's, with the message's fields.
    #[derive(Serialize)]
    struct DirectOut<'a> {
        o: &'a str,
        k: &'static str,
        m: &'a str,
        #[serde(flatten)]
        message: &'a DirectHeader,
        #[serde(skip_serializing_if = "Option::is_none")]
        t: Option<&'a str>,
    }

    /// The header line alone (no newline, no frame).
    pub fn header(origin: &str, event: &MeshEvent, trace: Option<&str>) -> Vec<u8> {
        if let MeshEvent::Direct {
            member_id, message, ..
        } = event
        {
            return serde_json::to_vec(&DirectOut {
                o: origin,
                k: "b",
                m: member_id,
                message,
                t: trace,
            })
            .unwrap_or_default();
        }
        serde_json::to_vec(&HeaderOut {
            o: origin,
            event,
            t: trace,
        })
        .unwrap_or_default()
    }

    /// Header, `\n`, frame.
    pub fn encode(origin: &str, event: &MeshEvent, trace: Option<&str>) -> Vec<u8> {
        let mut out = header(origin, event, trace);
        out.push(b'\n');
        if let MeshEvent::Deliver { frame, .. } = event {
            out.extend_from_slice(frame);
        }
        if let MeshEvent::StateChange { frame, .. } = event {
            out.extend_from_slice(frame);
        }
        if let MeshEvent::Direct { frame, .. } = event {
            out.extend_from_slice(frame);
        }
        out
    }

    /// A header and the frame that followed it (shared, not copied).
    pub fn from_parts(header: &[u8], frame: Bytes) -> Option<Envelope> {
        let HeaderIn { o, mut event, t } = serde_json::from_slice(header).ok()?;
        if let MeshEvent::Deliver { frame: f, .. } = &mut event {
            *f = frame;
        } else if let MeshEvent::StateChange { frame: f, .. } = &mut event {
            *f = frame;
        } else if let MeshEvent::Doorbell { member_id } = &event
            && !frame.is_empty()
        {
            // A doorbell with its message (see `MeshEvent::Direct`); one without the
            // message's fields stays a plain doorbell.
            if let Ok(message) = serde_json::from_slice::<DirectHeader>(header) {
                event = MeshEvent::Direct {
                    member_id: member_id.clone(),
                    message,
                    frame,
                };
            }
        }
        event.set_trace(t.clone());
        Some(Envelope {
            origin: o,
            trace: t,
            event,
        })
    }

    /// A whole message as received; `None` when it is not one.
    pub fn decode(payload: Bytes) -> Option<Envelope> {
        let split = payload.iter().position(|b| *b == b'\n')?;
        from_parts(&payload[..split], payload.slice(split + 1..))
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("bus unavailable: {0}")]
pub struct BusError(pub String);

/// Where a replica's bus hands the events it receives.
pub type BusSink = mpsc::UnboundedSender<(String, MeshEvent)>;

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    async fn publish(&self, mesh_id: &str, event: MeshEvent) -> Result<(), BusError>;
    /// Starts receiving the mesh's events (the first local socket of the mesh arrived).
    async fn subscribe(&self, mesh_id: &str) -> Result<(), BusError>;
    /// Stops receiving them (the last local socket of the mesh left).
    async fn unsubscribe(&self, mesh_id: &str) -> Result<(), BusError>;
    /// Whether publish/subscribe works end to end now (readiness).
    async fn healthy(&self) -> bool;
    /// Ticks each time the bus recovered from an outage: events may have been lost, so
    /// the replica re-syncs (resubscribes, re-registers presences, re-drains sessions).
    fn reconnects(&self) -> watch::Receiver<u64>;
}

/// In-process bus: single node only. A publish is handed straight to this replica's hub,
/// in publish order, and cannot be lost while the process runs.
#[derive(Debug)]
pub struct MemoryBus {
    sink: BusSink,
    subscribed: Mutex<HashSet<String>>,
    /// Never ticks: an in-process bus has no outages.
    reconnects: watch::Sender<u64>,
}

impl MemoryBus {
    pub fn new(sink: BusSink) -> Self {
        Self {
            sink,
            subscribed: Mutex::new(HashSet::new()),
            reconnects: watch::Sender::new(0),
        }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, mesh_id: &str, event: MeshEvent) -> Result<(), BusError> {
        let subscribed = self
            .subscribed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(mesh_id);
        if subscribed {
            // Through the one wire format, as any other backend would carry it (the frame
            // is shared, not copied).
            let trace = crate::telemetry::current_traceparent();
            let header = wire::header("", &event, trace.as_deref());
            let envelope = wire::from_parts(&header, event.frame())
                .ok_or_else(|| BusError(format!("{} event does not encode", event.kind())))?;
            self.sink
                .send((mesh_id.to_string(), envelope.event))
                .map_err(|_| BusError("hub has stopped".into()))?;
        }
        Ok(())
    }

    async fn subscribe(&self, mesh_id: &str) -> Result<(), BusError> {
        self.subscribed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(mesh_id.to_string());
        Ok(())
    }

    async fn unsubscribe(&self, mesh_id: &str) -> Result<(), BusError> {
        self.subscribed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(mesh_id);
        Ok(())
    }

    async fn healthy(&self) -> bool {
        !self.sink.is_closed()
    }

    fn reconnects(&self) -> watch::Receiver<u64> {
        self.reconnects.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct() -> MeshEvent {
        MeshEvent::Direct {
            member_id: "m1".into(),
            message: DirectHeader {
                id: "x1".into(),
                session_key: None,
                priority: Priority::Now,
                client_id: Some("c1".into()),
                trace: Some("00-abc-def-01".into()),
                created_at: 7,
            },
            frame: Bytes::from_static(b"{\"type\":\"push\"}\n\x00"),
        }
    }

    #[test]
    fn a_direct_event_round_trips_and_reads_as_a_doorbell_to_the_previous_release() {
        let encoded = Bytes::from(wire::encode("n1", &direct(), None));
        let Some(wire::Envelope {
            event:
                MeshEvent::Direct {
                    member_id,
                    message,
                    frame,
                },
            ..
        }) = wire::decode(encoded.clone())
        else {
            panic!("not a direct event");
        };
        assert_eq!(member_id, "m1");
        assert_eq!(message.id, "x1");
        assert_eq!(message.client_id.as_deref(), Some("c1"));
        assert_eq!(message.created_at, 7);
        assert_eq!(&frame[..], b"{\"type\":\"push\"}\n\x00");
        // The previous release decodes the header with the same derive and has no
        // `Direct`: it reads a doorbell for the member and drains.
        let split = encoded.iter().position(|b| *b == b'\n').unwrap_or(0);
        match serde_json::from_slice::<MeshEvent>(&encoded[..split]) {
            Ok(MeshEvent::Doorbell { member_id }) => assert_eq!(member_id, "m1"),
            other => panic!("not a doorbell: {other:?}"),
        }
        // A plain doorbell stays one.
        let plain = MeshEvent::Doorbell {
            member_id: "m2".into(),
        };
        assert!(matches!(
            wire::decode(Bytes::from(wire::encode("n1", &plain, None))),
            Some(wire::Envelope {
                event: MeshEvent::Doorbell { .. },
                ..
            })
        ));
    }
}
