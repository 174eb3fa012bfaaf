//! Presence changes (spec §4.4): status, summary, visibility, profile, stats, groups, and
//! the bounds they are checked against. One member must not grow its presence until the
//! peer lists and events about it no longer fit other sockets' outbound queues.

use serde_json::{Map, Value};
use tracing::warn;

use super::{Principal, ServiceCtx};
use crate::cluster::bus::MeshEvent;
use crate::cluster::presence::{PeerRole, PresencePatch, PresenceRecord};
use crate::config::Config;
use crate::ids::now_ms;
use crate::protocol::frames::PeerVisibility;
use crate::protocol::{self, Group, Status, SystemEvent};

/// A presence change refused by a bound: the `error` code and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceError {
    pub code: &'static str,
    pub message: String,
}

impl PresenceError {
    /// The `reason` label of `broker_presence_updates_rejected_total` (the wire code).
    pub fn metric_label(&self) -> &'static str {
        self.code
    }
}

impl std::fmt::Display for PresenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PresenceError {}

/// One change to the acting presence.
#[derive(Debug, Clone)]
pub enum PresenceChange {
    Status(Status),
    Summary(String),
    Visible(bool),
    /// Merged into the current profile.
    Profile(Map<String, Value>),
    Stats(Value),
    JoinGroup(Group),
    LeaveGroup(String),
}

/// A group name and role within `MAX_GROUP_NAME_BYTES`.
pub(crate) fn check_group(config: &Config, group: &Group) -> Result<(), PresenceError> {
    let max = config.max_group_name_bytes;
    let role = group.role.as_deref().unwrap_or("");
    if group.name.len() > max || role.len() > max {
        return Err(PresenceError {
            code: "name_too_long",
            message: format!("group names and roles are at most {max} bytes"),
        });
    }
    Ok(())
}

/// A free-form field of `len` bytes within `MAX_PRESENCE_FIELD_BYTES`.
pub(crate) fn check_field(config: &Config, what: &str, len: usize) -> Result<(), PresenceError> {
    let max = config.max_presence_field_bytes;
    if len > max {
        return Err(PresenceError {
            code: "field_too_large",
            message: format!("{what} is {len} bytes, at most {max} are allowed"),
        });
    }
    Ok(())
}

fn too_many_groups(max: usize) -> PresenceError {
    PresenceError {
        code: "too_many_groups",
        message: format!("a presence is in at most {max} groups"),
    }
}

/// What a `hello` announces about its presence, within the same bounds as the frames that
/// change it later: groups (count, names), display name and the other strings.
pub(crate) fn check_hello_meta(
    config: &Config,
    meta: &protocol::PeerMeta,
) -> Result<(), PresenceError> {
    if let Some(groups) = &meta.groups {
        let max = config.max_groups_per_presence;
        if groups.len() > max {
            return Err(too_many_groups(max));
        }
        for g in groups {
            check_group(config, g)?;
        }
    }
    let strings = [
        ("displayName", &meta.display_name),
        ("sessionId", &meta.session_id),
        ("cwd", &meta.cwd),
        ("hostname", &meta.hostname),
        ("peerType", &meta.peer_type),
        ("channel", &meta.channel),
        ("model", &meta.model),
    ];
    for (what, value) in strings {
        if let Some(v) = value {
            check_field(config, what, v.len())?;
        }
    }
    Ok(())
}

/// Groups a presence inherits (its earlier record, its saved state, the member's defaults),
/// cut to the bounds: they may predate them.
pub(crate) fn bounded_groups(config: &Config, mut groups: Vec<Group>) -> Vec<Group> {
    groups.retain(|g| check_group(config, g).is_ok());
    groups.truncate(config.max_groups_per_presence);
    groups
}

/// Applies `change` to `record`, the caller's view of the principal's presence, and to the
/// shared presence backend; a change of visibility is announced to the mesh. A refusal
/// changes nothing and is counted. A failed backend write is logged, not refused: the
/// caller's view stays authoritative and is written again by the next change or re-sync.
pub async fn update(
    ctx: &ServiceCtx,
    principal: &Principal,
    record: &mut PresenceRecord,
    change: PresenceChange,
) -> Result<(), PresenceError> {
    let result = apply(ctx, principal, record, change).await;
    if let Err(r) = &result {
        ctx.metrics().reject_presence_update(r.metric_label());
    }
    result
}

async fn apply(
    ctx: &ServiceCtx,
    principal: &Principal,
    record: &mut PresenceRecord,
    change: PresenceChange,
) -> Result<(), PresenceError> {
    let config = ctx.config();
    let patch = match change {
        PresenceChange::Status(status) => {
            record.status = status;
            PresencePatch::Status(status)
        }
        PresenceChange::Summary(summary) => {
            check_field(config, "summary", summary.len())?;
            record.summary = Some(summary.clone());
            PresencePatch::Summary(summary)
        }
        PresenceChange::Visible(visible) => {
            let changed = record.visible != visible;
            record.visible = visible;
            write(ctx, principal, record, PresencePatch::Visible(visible)).await;
            if changed {
                announce_visibility(ctx, record).await;
            }
            return Ok(());
        }
        PresenceChange::Profile(profile) => {
            let mut merged = record.profile.clone();
            merged.extend(profile.clone());
            let len = Value::Object(merged).to_string().len();
            check_field(config, "profile", len)?;
            record.profile.extend(profile.clone());
            PresencePatch::Profile(profile)
        }
        PresenceChange::Stats(stats) => {
            check_field(config, "stats", stats.to_string().len())?;
            record.stats = Some(stats.clone());
            PresencePatch::Stats(stats)
        }
        PresenceChange::JoinGroup(group) => {
            check_group(config, &group)?;
            let max = config.max_groups_per_presence;
            let new = !record.groups.iter().any(|g| g.name == group.name);
            if new && record.groups.len() >= max {
                return Err(too_many_groups(max));
            }
            record.groups.retain(|g| g.name != group.name);
            record.groups.push(group);
            PresencePatch::Groups(record.groups.clone())
        }
        PresenceChange::LeaveGroup(name) => {
            record.groups.retain(|g: &Group| g.name != name);
            PresencePatch::Groups(record.groups.clone())
        }
    };
    write(ctx, principal, record, patch).await;
    Ok(())
}

async fn write(
    ctx: &ServiceCtx,
    principal: &Principal,
    record: &PresenceRecord,
    patch: PresencePatch,
) {
    // What fan-out selects by: this replica's presence cache of the mesh is stale now.
    let routing = matches!(patch, PresencePatch::Visible(_) | PresencePatch::Groups(_));
    if let Err(e) = ctx
        .presence()
        .update(
            &principal.mesh.id,
            &principal.presence_id,
            &record.conn_id,
            patch,
        )
        .await
    {
        warn!(error = %e, "presence update failed");
    }
    if routing {
        ctx.presence_changed(&principal.mesh.id);
    }
}

async fn announce_visibility(ctx: &ServiceCtx, me: &PresenceRecord) {
    let records = ctx.presence().list(&me.mesh_id).await.unwrap_or_default();
    let to = records
        .iter()
        .filter(|r| r.is_live() && r.presence_id != me.presence_id)
        .map(|r| r.presence_id.clone())
        .collect();
    let data = PeerVisibility {
        name: me.display_name.clone(),
        pubkey: me.routing_key().to_string(),
    };
    let event = if me.visible {
        SystemEvent::PeerVisible(data)
    } else {
        SystemEvent::PeerHidden(data)
    };
    announce(ctx, &me.mesh_id, to, event).await;
}

/// Who hears that `subject` joined or left: every other live presence of the mesh, except
/// other presences of the same member when the subject is a control-plane (`hello`) one.
pub(crate) fn join_leave_recipients(
    records: &[PresenceRecord],
    subject: &PresenceRecord,
) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.is_live() && r.presence_id != subject.presence_id)
        .filter(|r| subject.peer_role == PeerRole::Session || r.member_id != subject.member_id)
        .map(|r| r.presence_id.clone())
        .collect()
}

/// Publishes a system event to `presence_ids`.
pub(crate) async fn announce(
    ctx: &ServiceCtx,
    mesh_id: &str,
    presence_ids: Vec<String>,
    event: SystemEvent,
) {
    if presence_ids.is_empty() {
        return;
    }
    let name = event.name();
    let frame = protocol::system_push(mesh_id, event, now_ms());
    // An event no recipient's queue can take would close every recipient (slow consumer).
    if frame.len() > ctx.config().outbound_queue_bytes {
        ctx.metrics().reply_too_large("system_event");
        warn!(
            event = name,
            bytes = frame.len(),
            "system event larger than the outbound bound; not announced"
        );
        return;
    }
    let event = MeshEvent::Deliver {
        presence_ids: presence_ids.into(),
        priority: None,
        frame,
        trace: None,
    };
    if let Err(e) = ctx.publish(mesh_id, event).await {
        warn!(error = %e, "system event not published");
    }
}
