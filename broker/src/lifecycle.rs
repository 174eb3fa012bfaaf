//! Vocabulary shared by the layers that end a connection: a leaf module, so the bus (which
//! carries it between replicas) and the hub (which hands it to a socket's task) need not
//! know each other.

/// What to do with a presence after its socket is closed by a close command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterClose {
    /// The presence enters lease grace (the client is expected back).
    Grace,
    /// The presence ends now, with `peer_left` (kick, ban).
    End,
}
