//! The stateful families (`extensions.md`) on the WebSocket. Each family's adapter
//! (`<family>.rs`) decodes its frames (typed, in `protocol::ext::<family>`), calls its
//! service module (`service::<family>`) and encodes the replies; this file only routes a
//! frame to the family that owns its `type`.

mod apikeys;
mod audit_query;
mod clocks;
mod contexts;
mod files;
mod info;
mod mcp_registry;
mod memories;
mod msg_status;
mod peer_relay;
mod schedule;
mod skills;
mod state;
mod streams;
mod tasks;
mod topics;
mod unsupported;
mod vault;
mod watches;
mod webhooks;

use super::Session;
use crate::protocol::ext;

/// The topic fields of a `send` to `#<topicId>` (extensions §9), for `handlers.rs`.
pub(super) fn topic_send_fields(text: &[u8]) -> ext::topics::TopicSendFields {
    topics::send_fields(text)
}

impl Session {
    /// A frame the core decoder did not know: the family that owns `kind` handles it, else
    /// it is `unknown_message_type`.
    pub(super) async fn extension(&mut self, kind: &str, text: &[u8], req_id: Option<&str>) {
        if ext::state::TYPES.contains(&kind) {
            return state::handle(self, kind, text, req_id).await;
        }
        if ext::memories::TYPES.contains(&kind) {
            return memories::handle(self, kind, text, req_id).await;
        }
        if ext::tasks::TYPES.contains(&kind) {
            return tasks::handle(self, kind, text, req_id).await;
        }
        if ext::streams::TYPES.contains(&kind) {
            return streams::handle(self, kind, text, req_id).await;
        }
        if ext::schedule::TYPES.contains(&kind) {
            return schedule::handle(self, kind, text, req_id).await;
        }
        if ext::clocks::TYPES.contains(&kind) {
            return clocks::handle(self, kind, text, req_id).await;
        }
        if ext::msg_status::TYPES.contains(&kind) {
            return msg_status::handle(self, kind, text, req_id).await;
        }
        if ext::audit_query::TYPES.contains(&kind) {
            return audit_query::handle(self, kind, text, req_id).await;
        }
        if ext::info::TYPES.contains(&kind) {
            return info::handle(self, kind, text, req_id).await;
        }
        if ext::contexts::TYPES.contains(&kind) {
            return contexts::handle(self, kind, text, req_id).await;
        }
        if ext::skills::TYPES.contains(&kind) {
            return skills::handle(self, kind, text, req_id).await;
        }
        if ext::vault::TYPES.contains(&kind) {
            return vault::handle(self, kind, text, req_id).await;
        }
        if ext::topics::TYPES.contains(&kind) {
            return topics::handle(self, kind, text, req_id).await;
        }
        if ext::apikeys::TYPES.contains(&kind) {
            return apikeys::handle(self, kind, text, req_id).await;
        }
        if ext::peer_relay::TYPES.contains(&kind) {
            return peer_relay::handle(self, kind, text, req_id).await;
        }
        if ext::mcp_registry::TYPES.contains(&kind) {
            return mcp_registry::handle(self, kind, text, req_id).await;
        }
        if ext::webhooks::TYPES.contains(&kind) {
            return webhooks::handle(self, kind, text, req_id).await;
        }
        if ext::watches::TYPES.contains(&kind) {
            return watches::handle(self, kind, text, req_id).await;
        }
        if ext::files::TYPES.contains(&kind) {
            return files::handle(self, kind, text, req_id).await;
        }
        if ext::unsupported::TYPES.contains(&kind) {
            return unsupported::handle(self, kind, text, req_id).await;
        }
        self.reply_error(
            "unknown_message_type",
            &format!("unknown message type {kind:?}"),
            req_id,
        );
    }
}
