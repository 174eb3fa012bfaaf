//! The operations of shared state (extensions §1): `set_state`, `get_state`, `list_state`,
//! without a transport.
//!
//! A write is committed to the store first, then announced: a
//! [`MeshEvent::StateChange`] carrying the `state_change` frame and the key's version goes
//! on the mesh bus to every presence of the mesh except the writer's own (its member's
//! other presences and sessions included). Replicas push it in version order per key
//! ([`ChangeOrder`]), so the last change a presence sees is the stored value, whichever
//! replicas the writers were on.
//!
//! Grants: `state-read` and `state-write` (protocol §4.5) are **not** enforced, as the spec
//! says (§1 "Ours: same"). A grant is the capability a *recipient* gives a *sender*; a key
//! has no recipient, and the CLI sends `set_state` without `_reqId`, so a refusal could not
//! be shown to anyone. Any member of the mesh (not revoked) may read and write every key.

use std::collections::HashMap;

use serde_json::{Value, json};
use tracing::warn;

use super::{Principal, ServiceCtx};
use crate::cluster::bus::MeshEvent;
use crate::ids::{self, now_ms};
use crate::node::Node;
use crate::protocol::{self, ext};
use crate::store::StoreError;
use crate::store::state::{SetState, StateEntry, StateWrite};

/// Why a state operation was refused. [`StateError::code`] and [`StateError::message`] are
/// the `error` frame's; [`StateError::metric_label`] the `reason` of
/// `broker_state_requests_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// `set_state` without a key.
    KeyMissing,
    /// A key over `MAX_STATE_KEY_BYTES`.
    KeyTooLong { max: usize },
    /// `set_state` without a value, or with `null`.
    ValueMissing,
    /// A new key in a mesh that holds `MAX_STATE_KEYS_PER_MESH` keys.
    TooManyKeys { max: usize },
    /// The writer's member row is revoked (banned) or gone.
    Revoked { mesh_name: String },
    /// A backend failed; nothing was written.
    Unavailable(String),
}

impl StateError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            StateError::KeyMissing | StateError::ValueMissing => "invalid",
            StateError::KeyTooLong { .. } => "key_too_long",
            StateError::TooManyKeys { .. } => "too_many_keys",
            StateError::Revoked { .. } => "revoked",
            StateError::Unavailable(_) => "store",
        }
    }

    /// The `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            StateError::KeyMissing | StateError::ValueMissing => "invalid",
            StateError::KeyTooLong { .. } => "key_too_long",
            StateError::TooManyKeys { .. } => "too_many_keys",
            StateError::Revoked { .. } => "forbidden",
            StateError::Unavailable(_) => "internal",
        }
    }

    /// The exact wire text.
    pub fn message(&self) -> String {
        match self {
            StateError::KeyMissing => "set_state needs a non-empty key".into(),
            StateError::KeyTooLong { max } => format!("state key is longer than {max} bytes"),
            StateError::ValueMissing => "set_state needs a value (any JSON but null)".into(),
            StateError::TooManyKeys { max } => {
                format!("this mesh already holds {max} state keys; set an existing key instead")
            }
            StateError::Revoked { mesh_name } => {
                format!("You've been removed from {mesh_name:?}. Contact the mesh owner to rejoin.")
            }
            StateError::Unavailable(e) => format!("state unavailable: {e}"),
        }
    }
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for StateError {}

fn unavailable(e: StoreError) -> StateError {
    StateError::Unavailable(e.to_string())
}

/// `updatedBy` of a row: the writer member's name, `"unknown"` when it has none.
fn updated_by(entry: &StateEntry) -> String {
    if entry.updated_by_name.is_empty() {
        "unknown".into()
    } else {
        entry.updated_by_name.clone()
    }
}

/// A stored entry as replies show it.
pub fn row(entry: &StateEntry) -> ext::state::StateRow {
    ext::state::StateRow {
        key: entry.key.clone(),
        value: entry.value.clone(),
        updated_by: updated_by(entry),
        updated_at: ids::iso8601_ms(entry.updated_at),
    }
}

/// `set_state`: validates, writes (last write wins), appends audit `state_set`, and
/// announces the change to every other presence of the mesh. Refusals are counted here.
pub async fn set(
    ctx: &ServiceCtx,
    p: &Principal,
    key: &str,
    value: &Value,
) -> Result<StateEntry, StateError> {
    let result = set_inner(ctx, p, key, value).await;
    if let Err(e) = &result {
        ctx.metrics().refuse_state(e.metric_label());
    }
    result
}

async fn set_inner(
    ctx: &ServiceCtx,
    p: &Principal,
    key: &str,
    value: &Value,
) -> Result<StateEntry, StateError> {
    let config = ctx.config();
    if key.is_empty() {
        return Err(StateError::KeyMissing);
    }
    if key.len() > config.max_state_key_bytes {
        return Err(StateError::KeyTooLong {
            max: config.max_state_key_bytes,
        });
    }
    if value.is_null() {
        return Err(StateError::ValueMissing);
    }
    // The writer's row as the member cache has it (dropped cluster-wide on a ban): a ban
    // that could not close this socket still stops its writes, and the name is current.
    let members = ctx.members(&p.mesh.id).await.map_err(unavailable)?;
    let Some(member) = members
        .iter()
        .find(|m| m.id == p.member.id && m.revoked_at.is_none())
    else {
        return Err(StateError::Revoked {
            mesh_name: p.mesh.name.clone(),
        });
    };
    let write = StateWrite {
        mesh_id: &p.mesh.id,
        key,
        value,
        member_id: &member.id,
        member_name: &member.display_name,
        now_ms: now_ms(),
        max_keys: config.max_state_keys_per_mesh,
    };
    let entry = match ctx.store().set_state(write).await.map_err(unavailable)? {
        SetState::Written(entry) => entry,
        SetState::TooManyKeys => {
            return Err(StateError::TooManyKeys {
                max: config.max_state_keys_per_mesh,
            });
        }
    };
    ctx.audit(
        &p.mesh.id,
        "state_set",
        Some(&p.member.id),
        json!({"key": key, "value": value}),
    );
    announce(ctx, p, &entry).await;
    Ok(entry)
}

/// Publishes the committed `entry` as a `state_change` to every presence of the mesh but
/// the writer's. The write stands if this fails (the bus is at most once anyway): readers
/// get the value from the store.
async fn announce(ctx: &ServiceCtx, p: &Principal, entry: &StateEntry) {
    let records = match ctx.presence().list(&p.mesh.id).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "presence unavailable; state_change not published");
            return;
        }
    };
    let presence_ids: Vec<String> = records
        .into_iter()
        .filter(|r| r.presence_id != p.presence_id)
        .map(|r| r.presence_id)
        .collect();
    if presence_ids.is_empty() {
        return;
    }
    let frame = protocol::encode(&ext::state::StateChange {
        key: entry.key.clone(),
        value: entry.value.clone(),
        updated_by: updated_by(entry),
    });
    let event = MeshEvent::StateChange {
        presence_ids: presence_ids.into(),
        key: entry.key.clone(),
        version: entry.version,
        frame,
    };
    if let Err(e) = ctx.publish(&p.mesh.id, event).await {
        warn!(error = %e, "state_change not published");
    }
}

/// `get_state`: the entry, or `None` when the key is not set (a key that could never be
/// set, empty or over the bound, is simply not set).
pub async fn get(
    ctx: &ServiceCtx,
    p: &Principal,
    key: &str,
) -> Result<Option<StateEntry>, StateError> {
    if key.is_empty() || key.len() > ctx.config().max_state_key_bytes {
        return Ok(None);
    }
    let result = ctx
        .store()
        .state(&p.mesh.id, key)
        .await
        .map_err(unavailable);
    if let Err(e) = &result {
        ctx.metrics().refuse_state(e.metric_label());
    }
    result
}

/// `list_state`: every key of the mesh ordered by key (at most `MAX_STATE_KEYS_PER_MESH`).
pub async fn list(ctx: &ServiceCtx, p: &Principal) -> Result<Vec<StateEntry>, StateError> {
    let limit = match ctx.config().max_state_keys_per_mesh {
        0 => usize::MAX,
        n => n,
    };
    let result = ctx
        .store()
        .list_state(&p.mesh.id, limit)
        .await
        .map_err(unavailable);
    if let Err(e) = &result {
        ctx.metrics().refuse_state(e.metric_label());
    }
    result
}

/// Most (mesh, key) versions one replica remembers before it forgets those of meshes
/// without local sockets (and, if that is not enough, all of them).
const CHANGE_ORDER_MAX: usize = 100_000;

/// The per-replica filter that keeps `state_change` pushes in commit order per key.
///
/// Writers on different replicas publish in any order, and a replica hands its own
/// publishes to its sockets before the others' arrive through Redis, so the arrival order
/// of two changes of one key is not their commit order. Each change carries the key's
/// version (the store's commit order); the dispatcher, the one consumer of a replica's bus
/// events, admits a change only if its version is higher than the last it pushed for that
/// key. Every local presence therefore sees a key's changes in increasing versions, and the
/// last one it sees is the highest, the stored value.
///
/// Owned by the dispatcher's loop (no lock). Bounded by [`CHANGE_ORDER_MAX`] entries:
/// beyond it the meshes without local sockets are forgotten, and if that is not enough,
/// everything (a change delayed in flight past that moment could then be pushed after a
/// newer one). Lost with a dispatcher restart, with the same consequence.
#[derive(Debug, Default)]
pub struct ChangeOrder {
    /// mesh id → key → highest version pushed.
    versions: HashMap<String, HashMap<String, i64>>,
    len: usize,
}

impl ChangeOrder {
    /// Whether `event` may be applied: every event but a stale `StateChange`, which is
    /// counted in `broker_state_changes_stale_total`.
    pub fn admit(&mut self, node: &Node, mesh_id: &str, event: &MeshEvent) -> bool {
        let MeshEvent::StateChange { key, version, .. } = event else {
            return true;
        };
        let fresh = self.admit_version(mesh_id, key, *version, |m| node.hub.has_mesh(m));
        if !fresh {
            node.metrics.state_changes_stale.inc();
        }
        fresh
    }

    /// Records `version` of `key` if it is newer than the last one; `has_local` says
    /// whether a mesh still has sockets here (for pruning).
    pub fn admit_version(
        &mut self,
        mesh_id: &str,
        key: &str,
        version: i64,
        has_local: impl Fn(&str) -> bool,
    ) -> bool {
        if let Some(last) = self.versions.get_mut(mesh_id).and_then(|k| k.get_mut(key)) {
            if version <= *last {
                return false;
            }
            *last = version;
            return true;
        }
        if self.len >= CHANGE_ORDER_MAX {
            self.versions.retain(|mesh, _| has_local(mesh));
            self.len = self.versions.values().map(HashMap::len).sum();
            if self.len >= CHANGE_ORDER_MAX {
                self.versions.clear();
                self.len = 0;
            }
        }
        self.versions
            .entry(mesh_id.to_string())
            .or_default()
            .insert(key.to_string(), version);
        self.len += 1;
        true
    }

    /// How many (mesh, key) versions are remembered.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_order_admits_only_newer_versions_per_key() {
        let mut o = ChangeOrder::default();
        let local = |_: &str| true;
        assert!(o.admit_version("m", "k", 2, local));
        assert!(!o.admit_version("m", "k", 1, local), "older after newer");
        assert!(
            !o.admit_version("m", "k", 2, local),
            "the same version twice"
        );
        assert!(
            o.admit_version("m", "other", 1, local),
            "keys are independent"
        );
        assert!(
            o.admit_version("n", "k", 1, local),
            "meshes are independent"
        );
        assert!(o.admit_version("m", "k", 3, local));
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn change_order_forgets_meshes_without_local_sockets_when_full() {
        let mut o = ChangeOrder::default();
        for i in 0..CHANGE_ORDER_MAX {
            assert!(o.admit_version("gone", &i.to_string(), 1, |_| true));
        }
        assert!(o.admit_version("here", "k", 5, |m| m == "here"));
        assert_eq!(o.len(), 1, "the mesh without sockets was forgotten");
        assert!(!o.admit_version("here", "k", 4, |_| true));
    }
}
