//! Frames of webhooks (extensions §15): `create_webhook`, `list_webhooks`, `delete_webhook` and the inbound HTTP route.

/// The client frame `type`s of this family.
pub const TYPES: &[&str] = &[];
