//! The seams that make replicas stateless: [`bus::Bus`] (fan-out and node commands),
//! [`presence::Presence`] (who is connected where, plus the cluster-wide limits), and
//! [`subscriptions::StreamSubscriptions`] (which presences subscribe to which stream).
//!
//! Dev mode uses the memory backends (one node). The backends are chosen at start-up from the
//! configuration (`lib.rs`); everything above this module sees only the traits.

pub mod bus;
pub mod mcp_registry;
pub mod presence;
pub mod redis_bus;
pub mod redis_conn;
pub mod redis_presence;
pub mod subscriptions;
