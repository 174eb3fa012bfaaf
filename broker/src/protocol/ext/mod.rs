//! The frames of the stateful families (`extensions.md`), one module per family: its
//! client frames (a serde enum tagged by `type`, decoded from the raw frame when the core
//! decoder did not know the type), its replies and pushes, and `TYPES`, the `type`s it owns.

pub mod apikeys;
pub mod audit_query;
pub mod clocks;
pub mod contexts;
pub mod files;
pub mod info;
pub mod mcp_registry;
pub mod memories;
pub mod msg_status;
pub mod peer_relay;
pub mod schedule;
pub mod skills;
pub mod state;
pub mod streams;
pub mod tasks;
pub mod topics;
pub mod unsupported;
pub mod vault;
pub mod watches;
pub mod webhooks;

/// Every `type` some family owns (the session routes these; anything else is unknown).
pub fn is_extension(kind: &str) -> bool {
    [
        state::TYPES,
        memories::TYPES,
        tasks::TYPES,
        streams::TYPES,
        schedule::TYPES,
        clocks::TYPES,
        msg_status::TYPES,
        audit_query::TYPES,
        info::TYPES,
        contexts::TYPES,
        skills::TYPES,
        vault::TYPES,
        topics::TYPES,
        apikeys::TYPES,
        peer_relay::TYPES,
        mcp_registry::TYPES,
        webhooks::TYPES,
        watches::TYPES,
        files::TYPES,
        unsupported::TYPES,
    ]
    .iter()
    .any(|types| types.contains(&kind))
}
