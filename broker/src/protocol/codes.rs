//! Every close code and every error code the broker sends, in one place.
//!
//! Nothing else in the broker writes a numeric close code: call sites take one of the
//! [`Close`] constants here. The tables of `docs/protocol.md` (close codes, error codes,
//! `ack.error`) are rendered from these lists, and a test fails when the document is
//! stale (`UPDATE_DOCS=1 cargo test -p broker --lib codes` rewrites them).

/// What a client should do after a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Reconnect (with backoff); the same session key or `sessionId` reattaches.
    Reconnect,
    /// Fix what the handshake error names, then retry.
    FixAndRetry,
    /// Stop: the client must not reconnect by itself.
    Terminal,
}

impl Then {
    fn describe(self) -> &'static str {
        match self {
            Then::Reconnect => "reconnect",
            Then::FixAndRetry => "fix and retry",
            Then::Terminal => "stop (terminal)",
        }
    }
}

/// One situation a close code is sent in, with what happens to the socket's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    pub when: &'static str,
    pub presence: &'static str,
}

/// A WebSocket close the broker sends: code, reason text, what the client should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    /// The close frame's reason. [`HANDSHAKE`] takes the handshake error code instead.
    pub reason: &'static str,
    pub then: Then,
    pub cases: &'static [Case],
}

impl Close {
    /// `(code, reason)`, as the outbound queue and the bus carry a close.
    pub const fn pair(&self) -> (u16, &'static str) {
        (self.code, self.reason)
    }
}

pub const SESSION_REPLACED: Close = Close {
    code: 1000,
    reason: "session_replaced",
    then: Then::Reconnect,
    cases: &[
        Case {
            when: "a reattach took this socket's presence",
            presence: "kept by the new socket",
        },
        Case {
            when: "another presence with the same `sessionId` replaced this one",
            presence: "ended, `peer_left`",
        },
        Case {
            when: "after a Redis outage, this socket found its presence owned by another connection (the replacement's close was lost in the outage)",
            presence: "kept by the other connection",
        },
    ],
};

pub const DISCONNECTED: Close = Close {
    code: 1000,
    reason: "disconnected",
    then: Then::Reconnect,
    cases: &[Case {
        when: "moderation `disconnect`",
        presence: "grace",
    }],
};

pub const GOING_AWAY: Close = Close {
    code: 1001,
    reason: "going_away",
    then: Then::Reconnect,
    cases: &[
        Case {
            when: "the broker (replica) is shutting down; reconnect with jittered backoff, through the load balancer to another replica, where the same session key or `sessionId` reattaches",
            presence: "grace",
        },
        Case {
            when: "**Beyond:** this replica may have been declared dead (a clock gap, or its presences were reaped) and closes its sockets to heal",
            presence: "grace",
        },
    ],
};

pub const PROTOCOL_ERROR: Close = Close {
    code: 1002,
    reason: "protocol error",
    then: Then::Reconnect,
    cases: &[Case {
        when: "a frame sequence RFC 6455 forbids: a continuation without a start, a new message inside a fragmented one, reserved bits, an unknown opcode",
        presence: "grace, if there was one",
    }],
};

pub const INVALID_UTF8: Close = Close {
    code: 1007,
    reason: "invalid utf-8",
    then: Then::Reconnect,
    cases: &[Case {
        when: "a text message that is not UTF-8 (RFC 6455 §8.1)",
        presence: "grace, if there was one",
    }],
};

/// A refused or timed-out handshake; the reason is the handshake error code.
pub const HANDSHAKE: Close = Close {
    code: 1008,
    // Not sent as is: every handshake close carries its error code (`Close::handshake`).
    reason: "",
    then: Then::FixAndRetry,
    cases: &[Case {
        when: "handshake refused or not completed in time; the reason is the handshake error code, e.g. `bad_signature`, `hello_timeout`",
        presence: "none was made",
    }],
};

impl Close {
    /// The handshake close ([`HANDSHAKE`]) with its error code as the reason.
    pub const fn handshake(code: &'static str) -> (u16, &'static str) {
        (HANDSHAKE.code, code)
    }
}

pub const FRAME_TOO_LARGE: Close = Close {
    code: 1009,
    reason: "frame too large",
    then: Then::Reconnect,
    cases: &[Case {
        when: "an inbound frame over `MAX_MESSAGE_BYTES`",
        presence: "grace, if there was one",
    }],
};

pub const TOO_MANY_FRAGMENTS: Close = Close {
    code: 1009,
    reason: "too many fragments",
    then: Then::Reconnect,
    cases: &[Case {
        when: "**Beyond:** a fragmented message over `MAX_MESSAGE_FRAGMENTS` frames",
        presence: "grace, if there was one",
    }],
};

pub const SLOW_CONSUMER: Close = Close {
    code: 1013,
    reason: "slow_consumer",
    then: Then::Reconnect,
    cases: &[Case {
        when: "**Beyond:** the socket's outbound queue passed `OUTBOUND_QUEUE_BYTES`; reconnect",
        presence: "grace",
    }],
};

pub const TRY_AGAIN_LATER: Close = Close {
    code: 1013,
    reason: "try_again_later",
    then: Then::Reconnect,
    cases: &[Case {
        when: "**Beyond:** a handshake refused `overloaded` (the replica is taking more handshakes than `HANDSHAKE_CONCURRENCY` and its queue); reconnect after the error's `retryAfterMs`",
        presence: "none was made",
    }],
};

pub const KICKED: Close = Close {
    code: 4001,
    reason: "kicked",
    then: Then::Terminal,
    cases: &[Case {
        when: "moderation `kick`; the client should stop and rejoin by hand",
        presence: "ended, `peer_left`",
    }],
};

pub const BANNED: Close = Close {
    code: 4002,
    reason: "banned",
    then: Then::Terminal,
    cases: &[Case {
        when: "a revoked member's handshake, a `send` from a revoked member, or moderation `ban`",
        presence: "ended, `peer_left`",
    }],
};

pub const REMOVED: Close = Close {
    code: 4003,
    reason: "removed",
    then: Then::Terminal,
    cases: &[Case {
        when: "**Beyond:** the operator API deleted the member (`DELETE /api/v1/meshes/{meshId}/members/{memberId}`) or its mesh (`DELETE /api/v1/meshes/{meshId}`); a reconnect is refused, the member no longer exists",
        presence: "ended: `peer_left` to the rest of the mesh for a member, nothing for a deleted mesh",
    }],
};

/// Every close, in the order of the table in `docs/protocol.md`.
pub const CLOSES: &[Close] = &[
    SESSION_REPLACED,
    DISCONNECTED,
    GOING_AWAY,
    PROTOCOL_ERROR,
    INVALID_UTF8,
    HANDSHAKE,
    FRAME_TOO_LARGE,
    TOO_MANY_FRAGMENTS,
    SLOW_CONSUMER,
    TRY_AGAIN_LATER,
    KICKED,
    BANNED,
    REMOVED,
];

/// What happens to the socket after an `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    StaysOpen,
    /// Closed with this code right after the error.
    Closed(u16),
}

/// One situation an error code is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCase {
    pub when: &'static str,
    pub socket: Socket,
}

/// An `error.code` the broker sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub code: &'static str,
    pub cases: &'static [ErrorCase],
}

const fn open(when: &'static str) -> ErrorCase {
    ErrorCase {
        when,
        socket: Socket::StaysOpen,
    }
}

const fn closed(when: &'static str, close: Close) -> ErrorCase {
    ErrorCase {
        when,
        socket: Socket::Closed(close.code),
    }
}

const HANDSHAKE_CHECK: &[ErrorCase] = &[closed(
    "handshake checks, see [Handshakes](#handshakes)",
    HANDSHAKE,
)];

const fn check(code: &'static str) -> ErrorCode {
    ErrorCode {
        code,
        cases: HANDSHAKE_CHECK,
    }
}

/// Every `error.code`, in the order of the table in `docs/protocol.md`.
pub const ERRORS: &[ErrorCode] = &[
    ErrorCode {
        code: "no_hello",
        cases: &[open(
            "any frame other than a handshake before the handshake",
        )],
    },
    ErrorCode {
        code: "malformed",
        cases: &[
            open(
                "a binary frame; a frame that is not a JSON object, has no `type`, or has fields of the wrong type",
            ),
            closed(
                "in a handshake: bad key or signature shape, missing attestation or non-integer `expiresAt`",
                HANDSHAKE,
            ),
        ],
    },
    ErrorCode {
        code: "hello_timeout",
        cases: &[closed(
            "no completed handshake within `HELLO_TIMEOUT_MS`",
            HANDSHAKE,
        )],
    },
    check("bad_session_pubkey"),
    check("bad_parent_pubkey"),
    check("attestation_mismatch"),
    check("capacity"),
    check("rate_limited"),
    ErrorCode {
        code: "overloaded",
        cases: &[closed(
            "**Beyond:** a handshake while this replica's handshake queue is full (`HANDSHAKE_QUEUE_MAX`) or that waited `HANDSHAKE_QUEUE_WAIT_MS` for a slot: `error{code, message, retryAfterMs, _reqId?}`, the client should reconnect after `retryAfterMs`",
            TRY_AGAIN_LATER,
        )],
    },
    check("timestamp_skew"),
    check("bad_signature"),
    check("replayed"),
    check("expired"),
    check("ttl_too_long"),
    check("unauthorized"),
    check("parent_member_id_mismatch"),
    ErrorCode {
        code: "revoked",
        cases: &[
            closed("handshake of a banned member", BANNED),
            closed(
                "a `send` from a member whose row is revoked (`error{code, message, id, _reqId?}`); nothing is delivered",
                BANNED,
            ),
        ],
    },
    ErrorCode {
        code: "internal",
        cases: &[
            open("**Ours:** a backend failed during an `apikey_*` request (extensions §10)"),
            open(
                "**Ours:** a backend failed during a file request (`file storage unavailable: …`, extensions §19.1)",
            ),
            closed(
                "a backend (PostgreSQL, or Redis in cluster mode) failed during a handshake",
                HANDSHAKE,
            ),
            open(
                "a backend failed during `list_peers`, or during a moderation verb (reading the caller's member row, writing a ban)",
            ),
            open("**Ours:** a backend failed during a task or stream request (extensions §0.4)"),
            open(
                "**Ours:** a backend failed during a shared-state or memory request (extensions §0.4); a failed `set_state` wrote nothing",
            ),
            open(
                "**Ours:** a backend failed during a scheduled-message or clock request (extensions §0.4); nothing was stored",
            ),
            open(
                "**Ours:** a backend failed during `message_status` or `mesh_info` (extensions §0.4)",
            ),
            open(
                "**Ours:** a backend failed during a context or skill request (extensions §0.4); nothing was stored",
            ),
        ],
    },
    ErrorCode {
        code: "invalid",
        cases: &[
            open(
                "`grant_file_access` with a `peerPubkey` that is not 64 hex characters or a `sealedKey` that is not base64 of at most 1024 characters, or of a new peer past `MAX_FILE_KEYS`; `list_files` with a `query` or `from` over `MAX_FILE_NAME_BYTES`",
            ),
            open(
                "a second `hello`/`session_hello` on a handshaked socket; `ban` of oneself, or of a `target` matching several members",
            ),
            open(
                "`set_state` without a key or with a missing or `null` value; `remember` without content",
            ),
            open("`share_context` without a summary; `share_skill` without a name or instructions"),
            open(
                "`peer_file_request`/`peer_dir_request` without `targetPubkey` or path; `mcp_register` without `serverName` or with a nameless tool",
            ),
        ],
    },
    ErrorCode {
        code: "unknown_message_type",
        cases: &[open("an unknown `type` after the handshake")],
    },
    ErrorCode {
        code: "forbidden",
        cases: &[
            open(
                "**Ours:** `apikey_create` with the `admin` capability by a member who is neither admin nor owner (`only owner or admin can mint a key with the admin capability`), or any `apikey_*` request from a member whose row is revoked (extensions §10)",
            ),
            open(
                "`get_file` of a file whose target spec does not name the caller (`file not targeted at you`) or an encrypted one without a sealed key for the caller (`no decryption key for this file`); `grant_file_access` by anyone but the uploader (`only the file owner can grant access`); **Ours:** `file_status` or `delete_file` by neither the uploader nor an admin, any file request from a member whose row is revoked",
            ),
            open("a moderation verb from a member who is neither admin nor owner"),
            open(
                "**Ours:** `topic_members`/`topic_history` of a private or dm topic by a member who is neither in it nor an admin (`not a member of this private topic`), or any topic request from a member whose row is revoked",
            ),
            open(
                "**Ours:** `set_state`, `remember` or `forget` from a member whose row is revoked (a ban that could not close the socket)",
            ),
            open(
                "**Ours:** `audit_query`/`audit_verify` from a member who is neither admin nor owner (`only owner or admin can read the audit log`)",
            ),
            open(
                "**Ours:** `share_skill` of a name another member shared, by neither that author nor an admin (nothing changes); `share_context`, `share_skill` or `remove_skill` from a member whose row is revoked",
            ),
            open(
                "**Ours:** `peer_file_request`/`peer_dir_request` whose target member's grants do not give the requester `file-read`; `mcp_register`/`mcp_unregister` of a name another member registered (nothing changes)",
            ),
            open(
                "**Ours:** `delete_webhook` of another member's webhook by neither its creator nor an admin (nothing changes)",
            ),
        ],
    },
    ErrorCode {
        code: "not_found",
        cases: &[
            open(
                "`get_file`, `file_status`, `grant_file_access` or `delete_file` of an id that is no complete, undeleted file of the caller's mesh (`file not found`)",
            ),
            open("`ban`/`unban` matched no member"),
            open(
                "`message_status` of an id (or prefix) matching no message of the caller's mesh (`message not found`); **Ours:** also one the caller neither sent nor was addressed by",
            ),
        ],
    },
    ErrorCode {
        code: "too_many_groups",
        cases: &[
            open("**Beyond:** `join_group` past `MAX_GROUPS_PER_PRESENCE` (nothing changes)"),
            closed(
                "**Beyond:** a handshake announcing more than `MAX_GROUPS_PER_PRESENCE` groups",
                HANDSHAKE,
            ),
        ],
    },
    ErrorCode {
        code: "name_too_long",
        cases: &[
            open("**Beyond:** `join_group` with a name or role over `MAX_GROUP_NAME_BYTES`"),
            open(
                "**Beyond:** a stream name over `MAX_STREAM_NAME_BYTES` (`create_stream`, `subscribe`, `unsubscribe`, `publish`)",
            ),
            closed("**Beyond:** a handshake announcing such a group", HANDSHAKE),
        ],
    },
    ErrorCode {
        code: "field_too_large",
        cases: &[
            open(
                "**Beyond:** `set_summary`, `set_profile` (merged) or `set_stats` over `MAX_PRESENCE_FIELD_BYTES`",
            ),
            open(
                "**Beyond:** `create_task` over `MAX_TASK_TITLE_BYTES`, `MAX_TASK_TAGS` or `MAX_TASK_TAG_BYTES`; `complete_task` over `MAX_TASK_RESULT_BYTES`",
            ),
            open(
                "**Ours:** `share_context` over `MAX_CONTEXT_SUMMARY_BYTES`, `MAX_CONTEXT_ITEMS` or `MAX_CONTEXT_ITEM_BYTES`; `share_skill` over `MAX_SKILL_NAME_BYTES`, `MAX_SKILL_DESCRIPTION_BYTES`, `MAX_SKILL_INSTRUCTIONS_BYTES`, `MAX_SKILL_MANIFEST_BYTES`, `MAX_SKILL_TAGS` or `MAX_SKILL_TAG_BYTES`",
            ),
            open(
                "**Ours:** `mcp_register` over `MAX_MCP_NAME_BYTES`, `MAX_MCP_TOOLS` or `MAX_MCP_REGISTRATION_BYTES`",
            ),
            closed(
                "**Beyond:** a handshake whose `displayName`, `sessionId`, `cwd`, `hostname`, `peerType`, `channel` or `model` is over it",
                HANDSHAKE,
            ),
        ],
    },
    ErrorCode {
        code: "reply_too_large",
        cases: &[
            open("**Beyond:** a `peers_list` larger than the connection's `OUTBOUND_QUEUE_BYTES`"),
            open(
                "**Beyond:** a `state_list`, `memory_results` or `memory_recall_result` larger than the space left in the connection's outbound queue",
            ),
            open(
                "**Beyond:** a `context_results`, `context_list`, `skill_data`, `skill_list`, `vault_get_result` or `vault_list_result` larger than the space left in the connection's outbound queue",
            ),
        ],
    },
    ErrorCode {
        code: "invalid_cron",
        cases: &[open(
            "`schedule` with a `cron` that is not five valid fields or has no fire within 366 days (`Invalid cron expression: <expr>`)",
        )],
    },
    ErrorCode {
        code: "too_many_scheduled",
        cases: &[open(
            "**Ours:** `schedule` past `SCHEDULE_MAX_PER_MEMBER` active entries of the member (nothing stored)",
        )],
    },
    ErrorCode {
        code: "invalid_schedule",
        cases: &[open(
            "**Ours:** `schedule` with an invalid `to`, a `subtype` other than `reminder`, or a message whose base64 does not fit `MAX_MESSAGE_BYTES`",
        )],
    },
    ErrorCode {
        code: "no_clock",
        cases: &[open(
            "`pause_clock`/`resume_clock` on a mesh without a clock (`No clock running for this mesh`)",
        )],
    },
    ErrorCode {
        code: "task_not_claimable",
        cases: &[open(
            "`claim_task` of a task that is not `open` or not in this mesh (another claimer won)",
        )],
    },
    ErrorCode {
        code: "task_not_found",
        cases: &[open(
            "`complete_task` of a task not in this mesh; **Ours:** also by a member who neither claimed nor created it and is no admin",
        )],
    },
    ErrorCode {
        code: "too_many_tasks",
        cases: &[open(
            "**Beyond:** `create_task` in a mesh holding `MAX_TASKS_PER_MESH` tasks none of which is `done`",
        )],
    },
    ErrorCode {
        code: "too_many_streams",
        cases: &[open(
            "**Beyond:** `create_stream` of a new name in a mesh holding `MAX_STREAMS_PER_MESH` streams",
        )],
    },
    ErrorCode {
        code: "too_many_subscriptions",
        cases: &[open(
            "**Beyond:** `subscribe` by a presence holding `MAX_STREAM_SUBSCRIPTIONS_PER_PRESENCE` subscriptions",
        )],
    },
    ErrorCode {
        code: "key_too_long",
        cases: &[open(
            "**Ours:** `set_state` with a key over `MAX_STATE_KEY_BYTES` (nothing is written)",
        )],
    },
    ErrorCode {
        code: "too_many_keys",
        cases: &[
            open(
                "**Ours:** `set_state` of a new key in a mesh holding `MAX_STATE_KEYS_PER_MESH` keys",
            ),
            open(
                "**Ours:** `apikey_create` by a member holding `MAX_API_KEYS_PER_MEMBER` API keys in the mesh (extensions §10)",
            ),
        ],
    },
    ErrorCode {
        code: "content_too_large",
        cases: &[open(
            "**Ours:** `remember` with content over `MAX_MEMORY_CONTENT_BYTES`",
        )],
    },
    ErrorCode {
        code: "too_many_tags",
        cases: &[open(
            "**Ours:** `remember` with more than `MAX_MEMORY_TAGS` tags",
        )],
    },
    ErrorCode {
        code: "tag_too_long",
        cases: &[open(
            "**Ours:** `remember` with a tag over `MAX_MEMORY_TAG_BYTES`",
        )],
    },
    ErrorCode {
        code: "too_many_memories",
        cases: &[open(
            "**Ours:** `remember` in a mesh holding `MAX_MEMORIES_PER_MESH` memories (not forgotten)",
        )],
    },
    ErrorCode {
        code: "query_too_long",
        cases: &[open(
            "**Ours:** `recall` with a query over `MAX_RECALL_QUERY_BYTES`",
        )],
    },
    ErrorCode {
        code: "too_many_skills",
        cases: &[open(
            "**Ours:** `share_skill` of a new name in a mesh holding `MAX_SKILLS_PER_MESH` skills",
        )],
    },
    ErrorCode {
        code: "vault_error",
        cases: &[open(
            "every refused vault request (extensions §16), with the reason as `message`: a missing or oversized field (`MAX_VAULT_KEY_BYTES`, `MAX_VAULT_BLOB_BYTES`, `MAX_VAULT_FIELD_BYTES`), **Ours:** blobs not of the client's shape (standard base64, 24-byte nonce, 80-byte sealed key), a new key beyond `MAX_VAULT_ENTRIES_PER_MEMBER`, a revoked member, a backend failure",
        )],
    },
    ErrorCode {
        code: "invalid_webhook",
        cases: &[open(
            "`create_webhook` without a name (`name is required`), **Ours:** or with one over `MAX_WEBHOOK_NAME_BYTES`",
        )],
    },
    ErrorCode {
        code: "webhook_exists",
        cases: &[open(
            "`create_webhook` of a name the mesh already has (`Webhook \"<name>\" already exists in this mesh`)",
        )],
    },
    ErrorCode {
        code: "too_many_webhooks",
        cases: &[open(
            "**Ours:** `create_webhook` in a mesh holding `MAX_WEBHOOKS_PER_MESH` webhooks",
        )],
    },
    ErrorCode {
        code: "invalid_args",
        cases: &[
            open(
                "a refused `apikey_create` (`label and at least one capability required`; **Ours:** an unknown capability, a label over 256 bytes, a bad topic scope, an unparsable or past `expiresAt`) or an `apikey_revoke` without `id` (`id required`), extensions §10",
            ),
            open(
                "**Ours:** a refused `topic_create` or `topic_join` (extensions §9): an empty name, one starting with `#` or over `MAX_TOPIC_NAME_CHARS`, a description over `MAX_TOPIC_DESCRIPTION_BYTES`, an unknown `visibility` or `role`",
            ),
            open(
                "a refused `watch` (extensions §17), with the reason as `message`: no or a bad URL, not http/https, **Ours:** a target the SSRF rules refuse (loopback, private, link-local, unspecified or metadata addresses after DNS resolution, unless `WATCH_ALLOWED_NETS` names them), an unknown `mode`, oversized fields (`MAX_WATCH_URL_BYTES`, `MAX_WATCH_FIELD_BYTES`, `MAX_WATCH_HEADERS`), a watch beyond `MAX_WATCHES_PER_MEMBER` or `MAX_WATCHES_PER_MESH` (a backend failure is `internal`)",
            ),
        ],
    },
    ErrorCode {
        code: "topic_not_found",
        cases: &[open(
            "a topic request (extensions §9) naming no topic of the caller's mesh by id or non-archived name: `topic \"<topic>\" not found` (**Ours:** with `_reqId`; `topic_join`/`topic_leave`/`topic_mark_read` only when they carried one)",
        )],
    },
    ErrorCode {
        code: "too_many_topics",
        cases: &[open(
            "**Ours:** `topic_create` of a new name in a mesh holding `MAX_TOPICS_PER_MESH` topics",
        )],
    },
    ErrorCode {
        code: "topic_full",
        cases: &[open(
            "**Ours:** `topic_join` of a topic with `MAX_TOPIC_MEMBERS` members (only when it carried a `_reqId`)",
        )],
    },
    ErrorCode {
        code: "invalid_argument",
        cases: &[open(
            "`message_status` whose `messageId` is not 8–32 base62 characters (`messageId must be 8-32 base62 chars (got <n>)`)",
        )],
    },
    ErrorCode {
        code: "ambiguous_prefix",
        cases: &[open(
            "`message_status` whose prefix matches several messages (`prefix matched <n> messages — use a longer id`)",
        )],
    },
    ErrorCode {
        code: "audit_query_error",
        cases: &[open("`audit_query`: the store failed (its error text)")],
    },
    ErrorCode {
        code: "audit_verify_error",
        cases: &[open("`audit_verify`: the store failed (its error text)")],
    },
    ErrorCode {
        code: "peer_not_found",
        cases: &[open(
            "`peer_file_request`/`peer_dir_request` whose `targetPubkey` is no live presence's member or session key (`target peer not connected`)",
        )],
    },
    ErrorCode {
        code: "too_many_pending",
        cases: &[open(
            "**Ours:** `peer_file_request`/`peer_dir_request` while the requester has `MAX_PENDING_PEER_REQUESTS_PER_PRESENCE` requests and calls waiting, or this replica `MAX_PENDING_PEER_REQUESTS_PER_REPLICA` (an `mcp_call` gets the text in `mcp_call_result.error` instead)",
        )],
    },
    ErrorCode {
        code: "too_many_mcp_servers",
        cases: &[open(
            "**Ours:** `mcp_register` of a new name in a mesh holding `MAX_MCP_SERVERS_PER_MESH` servers",
        )],
    },
    ErrorCode {
        code: "unsupported",
        cases: &[
            open(
                "a file frame other than `list_files` with `FILES_ENABLED=false` (`<type>: file sharing is not available on this broker (needs file storage: FILES_ENABLED)`; `list_files` gets an empty `file_list`)",
            ),
            open(
                "a request of a family this broker does not offer (extensions §0.3: vectors, graph, per-mesh SQL, managed services, §19.2–§19.5): `<type>: <feature> is not available on this broker (needs <service>)`; list-style reads get their typed empty reply instead, fire-and-forget frames without `_reqId` nothing",
            ),
        ],
    },
];

/// An `ack.error` text of a refused `send` (`ack{queued:false, error}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckError {
    /// The text as sent, or how it is made (`<N>`, `…`).
    pub text: &'static str,
    pub cause: &'static str,
}

pub const ACK_PAYLOAD_TOO_LARGE: &str = "payload too large";
pub const ACK_NO_TARGET: &str = "no connected peer for target";
pub const ACK_BLOCKED_BY_GRANT: &str = "blocked by recipient grants (sender lacks dm capability)";

/// Every `ack.error`, in the order of the table in `docs/protocol.md`.
pub const ACK_ERRORS: &[AckError] = &[
    AckError {
        text: "`rate_limit: more than <N> messages per minute, slow down`",
        cause: "the member's send bucket is empty (`N` is `BROKER_SEND_PER_MIN`)",
    },
    AckError {
        text: "`payload too large`",
        cause: "ciphertext + nonce + targetSpec over `MAX_MESSAGE_BYTES`",
    },
    AckError {
        text: "`invalid targetSpec: expected a 64-hex key, \"*\", \"@all\" or \"@group\"`",
        cause: "unclassifiable `targetSpec`",
    },
    AckError {
        text: "`no connected peer for target`",
        cause: "a direct key that is no non-revoked member's key and no session key of a presence of a non-revoked member",
    },
    AckError {
        text: "`blocked by recipient grants (sender lacks dm capability)`",
        cause: "the recipient's grants deny `dm`",
    },
    AckError {
        text: "the backend's error text (`presence unavailable: …`, `store unavailable: …`)",
        cause: "a backend failed; nothing was queued",
    },
    AckError {
        text: "`store outcome unknown: …; the message may have been queued: retry with the same client_message_id`",
        cause: "the database connection broke while the send's commit was in flight and the broker could not learn whether it committed. Not a refusal: retry with the same `client_message_id` (a retry of a sender's `client_message_id` is idempotent for `QUEUE_TTL_MS`: it queues nothing and answers the original `messageId`)",
    },
    AckError {
        text: "`bus unavailable: … (delivered on this replica only)`",
        cause: "a broadcast or group send whose publish to Redis failed: the recipients on the sender's replica got it, the others did not",
    },
    AckError {
        text: "`topic not found`",
        cause: "**Ours:** a `#<topicId>` target naming no live topic of the sender's mesh (extensions §9)",
    },
    AckError {
        text: "`not a member of this private topic`, `bodyVersion must be 1 or 2`",
        cause: "**Ours:** a `#<topicId>` post to a private or dm topic by a non-member, or with an unknown `bodyVersion`",
    },
];

fn socket_text(s: Socket) -> String {
    match s {
        Socket::StaysOpen => "stays open".into(),
        Socket::Closed(code) => format!("closed {code}"),
    }
}

/// The close-code table of `docs/protocol.md`.
pub fn close_table() -> String {
    let mut out = String::from(
        "| code | reason | when | client should | presence afterwards |\n|---|---|---|---|---|\n",
    );
    for c in CLOSES {
        let reason = if c.code == HANDSHAKE.code {
            "the handshake error code".to_string()
        } else {
            format!("`{}`", c.reason)
        };
        for case in c.cases {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                c.code,
                reason,
                case.when,
                c.then.describe(),
                case.presence
            ));
        }
    }
    out
}

/// The error-code table of `docs/protocol.md`; codes sent in the same situation share a row.
pub fn error_table() -> String {
    let mut rows: Vec<(Vec<&str>, &ErrorCase)> = Vec::new();
    for e in ERRORS {
        for case in e.cases {
            match rows.last_mut() {
                Some((codes, last)) if *last == case => codes.push(e.code),
                _ => rows.push((vec![e.code], case)),
            }
        }
    }
    let mut out = String::from("| code | when | socket |\n|---|---|---|\n");
    for (codes, case) in rows {
        let codes: Vec<String> = codes.iter().map(|c| format!("`{c}`")).collect();
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            codes.join(", "),
            case.when,
            socket_text(case.socket)
        ));
    }
    out
}

/// The `ack.error` table of `docs/protocol.md`.
pub fn ack_error_table() -> String {
    let mut out = String::from("| `ack.error` | cause |\n|---|---|\n");
    for a in ACK_ERRORS {
        out.push_str(&format!("| {} | {} |\n", a.text, a.cause));
    }
    out
}

/// Replaces what lies between `<!-- codes:NAME:begin -->` and `<!-- codes:NAME:end -->`.
pub fn splice(doc: &str, name: &str, table: &str) -> Option<String> {
    let begin = format!("<!-- codes:{name}:begin -->\n");
    let end = format!("<!-- codes:{name}:end -->");
    let start = doc.find(&begin)? + begin.len();
    let stop = start + doc[start..].find(&end)?;
    Some(format!("{}{}{}", &doc[..start], table, &doc[stop..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_consistent() {
        for c in CLOSES {
            assert!(!c.cases.is_empty(), "{} has no case", c.reason);
            let custom = (4000..5000).contains(&c.code);
            assert!(
                custom || c.code < 1016,
                "{} is no WebSocket close code",
                c.code
            );
        }
        // Terminal closes are exactly the application's own (4xxx) codes.
        for c in CLOSES {
            assert_eq!(c.then == Then::Terminal, c.code >= 4000, "{}", c.reason);
        }
        let mut seen = std::collections::HashSet::new();
        for e in ERRORS {
            assert!(seen.insert(e.code), "{} listed twice", e.code);
            for case in e.cases {
                if let Socket::Closed(code) = case.socket {
                    assert!(CLOSES.iter().any(|c| c.code == code), "{code}");
                }
            }
        }
        assert_eq!(Close::handshake("capacity"), (1008, "capacity"));
        assert_eq!(BANNED.pair(), (4002, "banned"));
        assert_eq!(SLOW_CONSUMER.pair(), (1013, "slow_consumer"));
    }

    #[test]
    fn the_error_table_groups_the_handshake_checks() {
        let table = error_table();
        assert!(table.contains("| `bad_session_pubkey`, `bad_parent_pubkey`, "));
        assert!(table.contains("| `revoked` | handshake of a banned member | closed 4002 |"));
    }

    /// A close code written as a number outside this module (`close(1009, …)`,
    /// `code: 4001`, `(1013, "…")`) is a second owner of the wire.
    #[test]
    fn no_numeric_close_code_outside_this_module() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).expect("read src").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let src = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
        let mut files = Vec::new();
        walk(src, &mut files);
        let mut found = Vec::new();
        for path in files.iter().filter(|p| !p.ends_with("protocol/codes.rs")) {
            let text = std::fs::read_to_string(path).expect("read file");
            for (n, line) in text.lines().enumerate() {
                for c in CLOSES {
                    let code = c.code;
                    let forms = [
                        format!("close({code}"),
                        format!("code: {code}"),
                        format!("({code}, \""),
                    ];
                    if forms.iter().any(|f| line.contains(f.as_str())) {
                        found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "numeric close codes outside protocol/codes.rs:\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn protocol_doc_tables_are_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
        let have = std::fs::read_to_string(path).expect("read docs/protocol.md");
        let mut want = have.clone();
        for (name, table) in [
            ("close", close_table()),
            ("error", error_table()),
            ("ack_error", ack_error_table()),
        ] {
            want = splice(&want, name, &table)
                .unwrap_or_else(|| panic!("docs/protocol.md has no codes:{name} markers"));
        }
        if have != want {
            if std::env::var_os("UPDATE_DOCS").is_some() {
                std::fs::write(path, &want).expect("write docs/protocol.md");
            } else {
                panic!(
                    "the code tables of docs/protocol.md are stale: run `UPDATE_DOCS=1 cargo test -p broker --lib codes`"
                );
            }
        }
    }
}
