//! The one typed configuration of a broker replica, and the only reader of the environment.
//!
//! Every setting is declared once in [`SETTINGS`] with its name, default, unit and meaning;
//! `docs/env-vars.md` is generated from that table by a test, so the documentation cannot
//! drift from the code. Tests build a [`Config`] from a map through [`Config::from_source`]
//! instead of mutating the process environment.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// One environment variable the broker understands.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    /// Default as written in the environment; empty when the variable has no default.
    pub default: &'static str,
    pub unit: &'static str,
    pub doc: &'static str,
}

/// Every variable, in the order `docs/env-vars.md` lists them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "BROKER_HOST",
        default: "0.0.0.0",
        unit: "address",
        doc: "Address the HTTP/WebSocket listener binds.",
    },
    Setting {
        name: "BROKER_PORT",
        default: "7900",
        unit: "port",
        doc: "Port of the listener (HTTP routes and `GET /ws` share it).",
    },
    Setting {
        name: "BROKER_INTERNAL_PORT",
        default: "",
        unit: "port",
        doc: "Port of the internal listener, which serves `/metrics`, the operator API (`/api/v1/…`) and `/health*`; the public port then answers 404 for `/metrics` and `/api/v1/…`. `0` picks a free port. Unset: no internal listener, everything on `BROKER_PORT`. Recommended for every internet-facing deployment (docs/operations.md).",
    },
    Setting {
        name: "BROKER_INTERNAL_HOST",
        default: "127.0.0.1",
        unit: "address",
        doc: "Address the internal listener binds (with `BROKER_INTERNAL_PORT`); `0.0.0.0` in a pod, so that Prometheus and operators reach it over the pod network.",
    },
    Setting {
        name: "BROKER_ADMIN_TOKEN",
        default: "",
        unit: "string",
        doc: "Bearer token of the operator API. Dev mode generates one and prints it once when unset.",
    },
    Setting {
        name: "BROKER_NODE_ID",
        default: "",
        unit: "string",
        doc: "Name of this replica in logs and presence records; a random id when unset.",
    },
    Setting {
        name: "DATABASE_URL",
        default: "",
        unit: "url",
        doc: "PostgreSQL. Unset: dev mode (memory store, one node).",
    },
    Setting {
        name: "REDIS_URL",
        default: "",
        unit: "url",
        doc: "Redis. With `DATABASE_URL`: cluster mode.",
    },
    Setting {
        name: "REDIS_MODE",
        default: "single",
        unit: "mode",
        doc: "`single` (one Redis) or `cluster`: `REDIS_URL` is then a comma-separated list of seed nodes of a Redis Cluster (sharded pub/sub, hash-tagged keys; see docs/redis-cluster.md).",
    },
    Setting {
        name: "REDIS_PREFIX",
        default: "mesh",
        unit: "string",
        doc: "Prefix of every Redis key and channel, so several clusters can share one Redis.",
    },
    Setting {
        name: "HEARTBEAT_INTERVAL_MS",
        default: "1000",
        unit: "ms",
        doc: "Cluster mode: how often a replica records its heartbeat, reaps dead replicas and expires lapsed leases.",
    },
    Setting {
        name: "NODE_DEAD_AFTER_MS",
        default: "8000",
        unit: "ms",
        doc: "Cluster mode: a replica whose heartbeat is older than this is dead; a survivor ends its presences.",
    },
    Setting {
        name: "DATABASE_POOL_SIZE",
        default: "16",
        unit: "connections",
        doc: "Largest PostgreSQL connection pool of this replica.",
    },
    Setting {
        name: "DATABASE_CONNECT_TIMEOUT_MS",
        default: "30000",
        unit: "ms",
        doc: "At start-up, how long to wait for PostgreSQL (and the schema check) and for Redis before giving up.",
    },
    Setting {
        name: "EXPECTED_MIGRATION",
        default: "",
        unit: "version",
        doc: "Readiness pin: `/health/ready` answers 503 while the schema is older than this migration.",
    },
    Setting {
        name: "MAX_MESSAGE_BYTES",
        default: "65536",
        unit: "bytes",
        doc: "Largest inbound frame (larger: close 1009) and largest `send` payload.",
    },
    Setting {
        name: "MAX_MESSAGE_FRAGMENTS",
        default: "128",
        unit: "frames",
        doc: "Most frames one fragmented WebSocket message may span (more: close 1009); its total is bounded by `MAX_MESSAGE_BYTES` as it accumulates.",
    },
    Setting {
        name: "HTTP_HEADER_READ_TIMEOUT_MS",
        default: "10000",
        unit: "ms",
        doc: "An HTTP connection that has not sent a complete request head this long after it opened, or after its previous response (keep-alive), is closed.",
    },
    Setting {
        name: "HTTP_IDLE_TIMEOUT_MS",
        default: "60000",
        unit: "ms",
        doc: "An HTTP (not upgraded) connection on which no byte moves in either direction for this long is closed: a stalled request body, a client that does not read its response.",
    },
    Setting {
        name: "MAX_HTTP_CONNECTIONS",
        default: "4096",
        unit: "connections",
        doc: "Open HTTP connections (not upgraded to WebSocket) per replica; beyond it a new connection is closed at once. Keep it below the file limit so sockets and the store keep descriptors.",
    },
    Setting {
        name: "HTTP_MAX_HEADER_BYTES",
        default: "16384",
        unit: "bytes",
        doc: "Largest HTTP request head (request line and headers) and the most a connection buffers while reading one (hyper's read buffer; at least 8192). A larger head is answered 431 and the connection closed.",
    },
    Setting {
        name: "MAX_CONNECTIONS_PER_MESH",
        default: "100",
        unit: "sockets",
        doc: "Open sockets per mesh; presences in lease grace do not count.",
    },
    Setting {
        name: "BROKER_SEND_BURST",
        default: "10",
        unit: "messages",
        doc: "Send rate limit: bucket size per member. `0` disables the limit.",
    },
    Setting {
        name: "BROKER_SEND_PER_MIN",
        default: "60",
        unit: "messages/minute",
        doc: "Send rate limit: refill per member. `0` disables the limit.",
    },
    Setting {
        name: "SESSION_HELLO_BURST_PER_MEMBER",
        default: "20",
        unit: "handshakes",
        doc: "Cluster-wide `session_hello` rate limit: bucket size per member (each verified `session_hello` reserves a session key for `SESSION_KEY_MEMORY_MS`). Checked once the member is known; beyond it the handshake is refused `rate_limited` (1008). `0` disables the limit.",
    },
    Setting {
        name: "SESSION_HELLOS_PER_MEMBER_PER_MIN",
        default: "60",
        unit: "handshakes/minute",
        doc: "Cluster-wide `session_hello` rate limit: refill per member. `0` disables the limit.",
    },
    Setting {
        name: "LEASE_GRACE_MS",
        default: "90000",
        unit: "ms",
        doc: "How long a presence outlives its closed socket, waiting for a reattach.",
    },
    Setting {
        name: "HELLO_TIMEOUT_MS",
        default: "10000",
        unit: "ms",
        doc: "A socket without a completed handshake after this long is closed 1008 `hello_timeout`.",
    },
    Setting {
        name: "HANDSHAKE_CONCURRENCY",
        default: "32",
        unit: "handshakes",
        doc: "Handshakes (`hello`, `session_hello`) this replica checks (signatures, store and presence lookups) and attaches at once; the others wait their turn in arrival order (`broker_handshakes_in_flight`, `broker_handshakes_waiting`). Bounds the Redis and PostgreSQL calls of a reconnect storm so that the replica's own calls (heartbeat, reaper) keep their latency. `0` disables the bound.",
    },
    Setting {
        name: "HANDSHAKE_QUEUE_MAX",
        default: "4096",
        unit: "handshakes",
        doc: "Handshakes that may wait for a `HANDSHAKE_CONCURRENCY` slot; beyond it a hello is refused at once `error{code:\"overloaded\", retryAfterMs}` and closed 1013 `try_again_later`, and while it is full and no slot is free a WebSocket upgrade is answered 503 with `Retry-After` (`broker_handshakes_shed_total`).",
    },
    Setting {
        name: "HANDSHAKE_QUEUE_WAIT_MS",
        default: "6000",
        unit: "ms",
        doc: "Longest wait of a handshake for a `HANDSHAKE_CONCURRENCY` slot; then it is refused `overloaded` with a `retryAfterMs` (`broker_handshakes_shed_total{reason=\"wait\"}`). Keep it below `HELLO_TIMEOUT_MS`: waiting in turn is cheaper than a refused client's reconnect.",
    },
    Setting {
        name: "HANDSHAKE_RETRY_AFTER_MS",
        default: "1000",
        unit: "ms",
        doc: "The back-off an `overloaded` refusal asks for: `retryAfterMs` is drawn uniformly from [this, 2 × this), times 1 + the waiting handshakes per slot (capped at 8×), so that refused clients spread out; the 503 before an upgrade says it in whole seconds (`Retry-After`).",
    },
    Setting {
        name: "PRESENCE_CACHE_TTL_MS",
        default: "1000",
        unit: "ms",
        doc: "Cluster mode: how long a replica trusts its cached listing of a mesh's presences (broadcast and group fan-out, join/leave recipients) without an invalidation. Presence events of the mesh (join, leave, visibility, replacement) drop it at once on every replica with sockets in the mesh; the TTL bounds what no event announces (a reattach from grace, a group change on another replica). `0` disables the cache (`broker_presence_cache_total`).",
    },
    Setting {
        name: "TIMESTAMP_SKEW_MS",
        default: "60000",
        unit: "ms",
        doc: "Largest accepted distance between a hello's timestamp and the broker clock; also the replay window.",
    },
    Setting {
        name: "REPLAY_CACHE_MAX",
        default: "100000",
        unit: "entries",
        doc: "Cluster mode: hello signatures each replica keeps for their replay window (2 × `TIMESTAMP_SKEW_MS`), a second replay guard that survives a Redis data loss and re-seeds the new Redis; the oldest are dropped beyond it (`broker_replay_cache_evictions_total`).",
    },
    Setting {
        name: "SESSION_KEY_MEMORY_MS",
        default: "86400000",
        unit: "ms",
        doc: "How long a session key proven by a `session_hello` stays reserved for its member (at least the attestation's remaining lifetime, cluster-wide): another member's `hello` announcing it is refused `bad_session_pubkey`.",
    },
    Setting {
        name: "PING_INTERVAL_MS",
        default: "30000",
        unit: "ms",
        doc: "Interval of WebSocket ping frames sent by the broker.",
    },
    Setting {
        name: "PONG_TIMEOUT_MS",
        default: "75000",
        unit: "ms",
        doc: "A socket with no pong for this long is terminated (its presence enters grace).",
    },
    Setting {
        name: "CLAIM_LEASE_MS",
        default: "30000",
        unit: "ms",
        doc: "A pushed direct message not acknowledged by `client_ack` within this lease is pushed again.",
    },
    Setting {
        name: "DIRECT_PUSH",
        default: "false",
        unit: "bool",
        doc: "`true`: a committed direct message travels in its doorbell and the recipient's replica pushes it without a claim (lower latency: no claim round trip). `false`: the doorbell only rings and the recipient's connections claim the message from the store. Off by default: on the measured closed loop the pushed path cost PostgreSQL about 70 % more CPU per message and halved throughput (docs/benchmarks.md, sitting of 2026-12-01 18:50).",
    },
    Setting {
        name: "DIRECT_LEASE_DELAY_MS",
        default: "1000",
        unit: "ms",
        doc: "A direct message pushed by its doorbell (no claim) gets its lease recorded in the store only if it is still unacknowledged this long after the push (at most half of `CLAIM_LEASE_MS`): most are confirmed sooner, and their queue row is never updated. Until then another connection of the member may claim it too (a duplicate, never a loss).",
    },
    Setting {
        name: "QUEUE_TTL_MS",
        default: "604800000",
        unit: "ms",
        doc: "Undelivered direct messages older than this are swept (7 days).",
    },
    Setting {
        name: "OUTBOUND_QUEUE_BYTES",
        default: "4194304",
        unit: "bytes",
        doc: "Bound of one socket's outbound queue; a client that lets it overflow is closed 1013 `slow_consumer`.",
    },
    Setting {
        name: "HELD_QUEUE_BYTES",
        default: "1048576",
        unit: "bytes",
        doc: "Bound of the broadcasts held for one busy (`working`/`dnd`) presence; the oldest are dropped beyond it.",
    },
    Setting {
        name: "HOOK_RATE_PER_MIN",
        default: "30",
        unit: "requests/minute",
        doc: "Rate limit of `POST /hook/set-status` per `pid:cwd`.",
    },
    Setting {
        name: "HOOK_PENDING_MS",
        default: "10000",
        unit: "ms",
        doc: "How long a hook status waits for a presence that has not connected yet.",
    },
    Setting {
        name: "HOOK_PENDING_MAX",
        default: "10000",
        unit: "entries",
        doc: "Most hook statuses kept waiting for presences at once: cluster-wide in Redis, per replica on a single node (or while Redis fails); further ones are dropped (`broker_hook_pending_dropped_total`).",
    },
    Setting {
        name: "AUDIT_BUFFER",
        default: "16384",
        unit: "events",
        doc: "Most audit events (`message_sent`, `peer_joined`, …) waiting to be appended to their chains; one that finds the buffer full is appended on a task of its own (`broker_audit_buffer_full_total`, never dropped). Shutdown writes the buffer out.",
    },
    Setting {
        name: "AUDIT_BATCH_MAX",
        default: "1024",
        unit: "events",
        doc: "Most buffered audit events appended as one batch (one lock in memory, one transaction per mesh in PostgreSQL); each event is still its own chain entry.",
    },
    Setting {
        name: "AUDIT_FLUSH_MS",
        default: "10",
        unit: "ms",
        doc: "Longest an audit event waits in the buffer for its batch to fill (`AUDIT_BATCH_MAX`) before the batch is appended; 0 appends whatever is buffered at once.",
    },
    Setting {
        name: "HOOK_MAX_CWD_BYTES",
        default: "4096",
        unit: "bytes",
        doc: "Longest `cwd` a `POST /hook/set-status` may name; a longer one is refused 400.",
    },
    Setting {
        name: "HOOK_RATE_PER_SOURCE_PER_MIN",
        default: "600",
        unit: "requests/minute",
        doc: "Rate limit of `POST /hook/set-status` per source address (IPv6: per /64), cluster-wide, on top of the `pid:cwd` limit; `0` disables it. Behind a proxy every hook shares the proxy's address.",
    },
    Setting {
        name: "MAX_GROUPS_PER_PRESENCE",
        default: "32",
        unit: "groups",
        doc: "Most groups one presence may be in (`join_group` beyond it: `error` `too_many_groups`; a `hello` announcing more is refused).",
    },
    Setting {
        name: "MAX_GROUP_NAME_BYTES",
        default: "64",
        unit: "bytes",
        doc: "Longest group name or group role (`error` `name_too_long`).",
    },
    Setting {
        name: "MAX_PRESENCE_FIELD_BYTES",
        default: "4096",
        unit: "bytes",
        doc: "Longest free-form presence field: summary, display name, profile and stats (as JSON), and each string of a `hello` (`error` `field_too_large`).",
    },
    Setting {
        name: "MAX_TASK_TITLE_BYTES",
        default: "512",
        unit: "bytes",
        doc: "Longest `create_task` title, and its `assignee` and `priority` (`error` `field_too_large`).",
    },
    Setting {
        name: "MAX_TASK_TAGS",
        default: "16",
        unit: "tags",
        doc: "Most tags of one task (`create_task` beyond it: `error` `field_too_large`).",
    },
    Setting {
        name: "MAX_TASK_TAG_BYTES",
        default: "64",
        unit: "bytes",
        doc: "Longest tag of a task (`error` `field_too_large`).",
    },
    Setting {
        name: "MAX_TASK_RESULT_BYTES",
        default: "8192",
        unit: "bytes",
        doc: "Longest `complete_task` result (`error` `field_too_large`; the task stays as it was).",
    },
    Setting {
        name: "MAX_TASKS_PER_MESH",
        default: "10000",
        unit: "tasks",
        doc: "Most tasks one mesh keeps: at the bound a new task replaces the oldest `done` one; with none done `create_task` is refused `too_many_tasks`.",
    },
    Setting {
        name: "MAX_STREAM_NAME_BYTES",
        default: "128",
        unit: "bytes",
        doc: "Longest stream name in `create_stream`, `subscribe`, `unsubscribe` and `publish` (`error` `name_too_long`).",
    },
    Setting {
        name: "MAX_STREAMS_PER_MESH",
        default: "1000",
        unit: "streams",
        doc: "Most stream names one mesh keeps (`create_stream` of a new name beyond it: `error` `too_many_streams`).",
    },
    Setting {
        name: "MAX_STREAM_SUBSCRIPTIONS_PER_PRESENCE",
        default: "64",
        unit: "subscriptions",
        doc: "Most streams one presence may subscribe to, cluster-wide (`subscribe` beyond it: `error` `too_many_subscriptions`).",
    },
    Setting {
        name: "MAX_STATE_KEY_BYTES",
        default: "256",
        unit: "bytes",
        doc: "Longest shared-state key (`set_state` beyond it: `error` `key_too_long`; `get_state` of such a key answers \"not set\").",
    },
    Setting {
        name: "MAX_STATE_KEYS_PER_MESH",
        default: "1000",
        unit: "keys",
        doc: "Most shared-state keys one mesh holds (`set_state` of a new key beyond it: `error` `too_many_keys`; existing keys can still be set). `0` disables the bound. `list_state` answers at most this many.",
    },
    Setting {
        name: "MAX_MEMORY_CONTENT_BYTES",
        default: "16384",
        unit: "bytes",
        doc: "Largest `remember` content (`error` `content_too_large`).",
    },
    Setting {
        name: "MAX_MEMORY_TAGS",
        default: "32",
        unit: "tags",
        doc: "Most tags of one memory (`error` `too_many_tags`).",
    },
    Setting {
        name: "MAX_MEMORY_TAG_BYTES",
        default: "64",
        unit: "bytes",
        doc: "Longest tag of a memory (`error` `tag_too_long`).",
    },
    Setting {
        name: "MAX_RECALL_QUERY_BYTES",
        default: "1024",
        unit: "bytes",
        doc: "Longest `recall` query (`error` `query_too_long`).",
    },
    Setting {
        name: "MAX_MEMORIES_PER_MESH",
        default: "10000",
        unit: "memories",
        doc: "Most memories (not forgotten) one mesh holds (`remember` beyond it: `error` `too_many_memories`). `0` disables the bound.",
    },
    Setting {
        name: "MAX_CONTEXT_SUMMARY_BYTES",
        default: "4096",
        unit: "bytes",
        doc: "Largest `share_context` summary (`error` `field_too_large`).",
    },
    Setting {
        name: "MAX_CONTEXT_ITEMS",
        default: "64",
        unit: "items",
        doc: "Most entries of each list of a `share_context` (`filesRead`, `keyFindings`, `tags`; `error` `field_too_large`).",
    },
    Setting {
        name: "MAX_CONTEXT_ITEM_BYTES",
        default: "1024",
        unit: "bytes",
        doc: "Longest entry of a `share_context` list (`error` `field_too_large`).",
    },
    Setting {
        name: "MAX_CONTEXTS_LISTED",
        default: "200",
        unit: "contexts",
        doc: "Most contexts one `list_contexts` answers (the newest); a mesh holds one per member that shared.",
    },
    Setting {
        name: "MAX_SKILL_NAME_BYTES",
        default: "128",
        unit: "bytes",
        doc: "Longest skill name (`share_skill` beyond it: `error` `field_too_large`).",
    },
    Setting {
        name: "MAX_SKILL_DESCRIPTION_BYTES",
        default: "1024",
        unit: "bytes",
        doc: "Longest skill description (`error` `field_too_large`).",
    },
    Setting {
        name: "MAX_SKILL_INSTRUCTIONS_BYTES",
        default: "32768",
        unit: "bytes",
        doc: "Largest skill `instructions` (`error` `field_too_large`).",
    },
    Setting {
        name: "MAX_SKILL_MANIFEST_BYTES",
        default: "8192",
        unit: "bytes",
        doc: "Largest skill `manifest` as sent (raw JSON text; `error` `field_too_large`).",
    },
    Setting {
        name: "MAX_SKILL_TAGS",
        default: "32",
        unit: "tags",
        doc: "Most tags of one skill (`error` `field_too_large`).",
    },
    Setting {
        name: "MAX_SKILL_TAG_BYTES",
        default: "64",
        unit: "bytes",
        doc: "Longest tag of a skill (`error` `field_too_large`).",
    },
    Setting {
        name: "MAX_SKILLS_PER_MESH",
        default: "500",
        unit: "skills",
        doc: "Most skills one mesh holds (`share_skill` of a new name beyond it: `error` `too_many_skills`; existing names can still be replaced). `0` disables the bound. `list_skills` answers at most this many.",
    },
    Setting {
        name: "MAX_VAULT_KEY_BYTES",
        default: "256",
        unit: "bytes",
        doc: "Longest vault key (`vault_set` beyond it: `error` `vault_error`; `vault_get`/`vault_delete` of such a key find nothing).",
    },
    Setting {
        name: "MAX_VAULT_BLOB_BYTES",
        default: "49152",
        unit: "bytes",
        doc: "Largest vault `ciphertext` (base64 text, the frame's `MAX_MESSAGE_BYTES` bounds it too; `error` `vault_error`).",
    },
    Setting {
        name: "MAX_VAULT_FIELD_BYTES",
        default: "1024",
        unit: "bytes",
        doc: "Longest vault `mount_path` or `description` (`error` `vault_error`).",
    },
    Setting {
        name: "MAX_VAULT_ENTRIES_PER_MEMBER",
        default: "100",
        unit: "entries",
        doc: "Most vault entries one member holds in one mesh (`vault_set` of a new key beyond it: `error` `vault_error`). `0` disables the bound. `vault_list` answers at most this many, and a `vault_get` may name at most this many keys.",
    },
    Setting {
        name: "MAX_TOPICS_PER_MESH",
        default: "1000",
        unit: "topics",
        doc: "Most non-archived topics one mesh holds (`topic_create` of a new name beyond it: `error` `too_many_topics`). `0` disables the bound. `topic_list` answers at most this many.",
    },
    Setting {
        name: "MAX_TOPIC_MEMBERS",
        default: "1000",
        unit: "members",
        doc: "Most members one topic has (a join beyond it: `error` `topic_full`, REST 409). `0` disables the bound.",
    },
    Setting {
        name: "MAX_TOPIC_NAME_CHARS",
        default: "64",
        unit: "characters",
        doc: "Longest topic name (`topic_create` beyond it: `error` `invalid_args`).",
    },
    Setting {
        name: "MAX_TOPIC_DESCRIPTION_BYTES",
        default: "1024",
        unit: "bytes",
        doc: "Longest topic description (`topic_create` beyond it: `error` `invalid_args`).",
    },
    Setting {
        name: "TOPIC_HISTORY_MAX_LIMIT",
        default: "200",
        unit: "messages",
        doc: "Largest page of `topic_history` and REST topic messages: a larger `limit` is clamped to it (counted in `broker_topic_history_clamped_total`).",
    },
    Setting {
        name: "FILES_ENABLED",
        default: "true",
        unit: "bool",
        doc: "`false` turns file sharing (extensions §19.1) off: `POST /upload` and `GET /download/…` answer 501, `list_files` an empty `file_list`, the other file frames `error` `unsupported`.",
    },
    Setting {
        name: "MAX_FILE_BYTES",
        default: "52428800",
        unit: "bytes",
        doc: "Largest uploaded file (`POST /upload` beyond it: 413 `{ok:false, error:\"file too large (max <N>MB)\"}`; a `Content-Length` over it is refused before the body is read).",
    },
    Setting {
        name: "MAX_MESH_FILE_BYTES",
        default: "1073741824",
        unit: "bytes",
        doc: "Bytes the files of one mesh may hold together, in-progress uploads included, cluster-wide (an upload that would pass it: 413 `{ok:false, error:\"mesh file storage is full (max <N>MB)\"}`, the partial upload dropped). Deleting a file releases its bytes.",
    },
    Setting {
        name: "MAX_FILES_PER_MESH",
        default: "10000",
        unit: "files",
        doc: "Files (not deleted) one mesh may hold; an upload beyond it: 413. `0` disables the bound.",
    },
    Setting {
        name: "MAX_FILE_NAME_BYTES",
        default: "255",
        unit: "bytes",
        doc: "Longest `X-File-Name` (after percent-decoding), `list_files` `query` or `from` (400 / `error` `invalid`).",
    },
    Setting {
        name: "MAX_FILE_TAGS",
        default: "32",
        unit: "tags",
        doc: "Most `X-Tags` of one upload, each at most `MAX_FILE_NAME_BYTES` (400 beyond it).",
    },
    Setting {
        name: "MAX_FILE_KEYS",
        default: "256",
        unit: "keys",
        doc: "Most per-peer sealed keys of one encrypted file (`X-File-Keys` beyond it: 400; `grant_file_access` of a new peer beyond it: `error` `invalid`). `0` disables the bound.",
    },
    Setting {
        name: "MAX_FILE_ACCESSES",
        default: "1000",
        unit: "entries",
        doc: "Accesses kept per file for `file_status` (the newest; older ones are dropped).",
    },
    Setting {
        name: "FILE_URL_TTL_MS",
        default: "60000",
        unit: "ms",
        doc: "How long the download URL of a `get_file` (a signed token, valid on every replica sharing the session secret) stays valid.",
    },
    Setting {
        name: "FILE_UPLOAD_TIMEOUT_MS",
        default: "600000",
        unit: "ms",
        doc: "Longest `POST /upload` body transfer (beyond it: 408, the partial upload dropped). An incomplete upload older than twice this (its replica died) is dropped by the next upload to its mesh.",
    },
    Setting {
        name: "FILES_S3_ENDPOINT",
        default: "",
        unit: "URL",
        doc: "An S3-compatible object store for file bodies (`http(s)://host[:port]`); metadata, keys and the byte budget stay in PostgreSQL. Unset: bodies are PostgreSQL chunks. Needs `FILES_S3_BUCKET`, `FILES_S3_ACCESS_KEY_ID` and `FILES_S3_SECRET_ACCESS_KEY` (else exit 64).",
    },
    Setting {
        name: "FILES_S3_BUCKET",
        default: "",
        unit: "name",
        doc: "Bucket of the file objects (it must exist).",
    },
    Setting {
        name: "FILES_S3_REGION",
        default: "us-east-1",
        unit: "name",
        doc: "Region the requests are signed for (SigV4).",
    },
    Setting {
        name: "FILES_S3_ACCESS_KEY_ID",
        default: "",
        unit: "string",
        doc: "Access key id of the object store.",
    },
    Setting {
        name: "FILES_S3_SECRET_ACCESS_KEY",
        default: "",
        unit: "secret",
        doc: "Secret access key of the object store (never logged).",
    },
    Setting {
        name: "FILES_S3_PATH_STYLE",
        default: "true",
        unit: "bool",
        doc: "`true`: `<endpoint>/<bucket>/<key>` URLs (MinIO, most self-hosted stores); `false`: virtual-host `<bucket>.<host>` URLs (AWS).",
    },
    Setting {
        name: "FILES_S3_PRESIGN",
        default: "false",
        unit: "bool",
        doc: "`true`: `get_file` answers a presigned GET of the object valid for `FILE_URL_TTL_MS`, and `GET /download/<id>` answers 302 to one (clients fetch from the store); `false`: the broker streams the object itself (the store need not be reachable by clients).",
    },
    Setting {
        name: "FILES_S3_PREFIX",
        default: "files/",
        unit: "string",
        doc: "Prefix of every object key (`<prefix><meshId>/<fileId>`); the orphan sweep only looks under it.",
    },
    Setting {
        name: "FILES_S3_PART_BYTES",
        default: "8388608",
        unit: "bytes",
        doc: "Part size of multipart uploads, at least 5242880 (S3's minimum): one upload holds at most this in memory; a file up to it is one PUT.",
    },
    Setting {
        name: "FILES_S3_TIMEOUT_MS",
        default: "30000",
        unit: "ms",
        doc: "Longest wait for one object-store request's answer (connect included); beyond it, or when the store is unreachable, the upload or download answers 503 `{ok:false, error:\"file object store unavailable\"}` and nothing stays stored.",
    },
    Setting {
        name: "FILES_S3_SWEEP_INTERVAL_MS",
        default: "3600000",
        unit: "ms",
        doc: "How often each replica deletes orphaned objects (older than twice `FILE_UPLOAD_TIMEOUT_MS`, without a visible file row: a crash between an object and its row, a failed delete).",
    },
    Setting {
        name: "PEER_RELAY_TIMEOUT_MS",
        default: "15000",
        unit: "ms",
        doc: "How long a relayed `peer_file_request`/`peer_dir_request` waits for the target's answer (extensions §13); then the requester gets its `*_response_forward` with `error` `peer did not answer within <N>s`.",
    },
    Setting {
        name: "MCP_CALL_TIMEOUT_MS",
        default: "30000",
        unit: "ms",
        doc: "How long an `mcp_call` waits for the host's `mcp_call_response` (extensions §14); then the caller gets `mcp_call_result` with `error` `MCP call timed out (<N>s)`.",
    },
    Setting {
        name: "MAX_PENDING_PEER_REQUESTS_PER_PRESENCE",
        default: "32",
        unit: "requests",
        doc: "Most relayed file/dir requests and MCP calls one presence has waiting for an answer, cluster-wide (beyond it: `error` `too_many_pending` for a relay, `mcp_call_result.error` for a call). `0` disables the bound.",
    },
    Setting {
        name: "MAX_PENDING_PEER_REQUESTS_PER_REPLICA",
        default: "10000",
        unit: "requests",
        doc: "Most relayed file/dir requests and MCP calls waiting for an answer that this replica keeps a timer for (refused like the per-presence bound). `0` disables the bound.",
    },
    Setting {
        name: "MAX_MCP_SERVERS_PER_MESH",
        default: "64",
        unit: "servers",
        doc: "Most peer-hosted MCP servers one mesh registers (`mcp_register` of a new name beyond it: `error` `too_many_mcp_servers`). `0` disables the bound.",
    },
    Setting {
        name: "MAX_MCP_TOOLS",
        default: "128",
        unit: "tools",
        doc: "Most tools of one `mcp_register` (`error` `field_too_large`).",
    },
    Setting {
        name: "MAX_MCP_NAME_BYTES",
        default: "128",
        unit: "bytes",
        doc: "Longest MCP server or tool name of `mcp_register` (`error` `field_too_large`).",
    },
    Setting {
        name: "MAX_MCP_REGISTRATION_BYTES",
        default: "32768",
        unit: "bytes",
        doc: "Largest registration of one `mcp_register` (descriptions, tools and their input schemas, as JSON; `error` `field_too_large`).",
    },
    Setting {
        name: "MAX_API_KEYS_PER_MEMBER",
        default: "100",
        unit: "keys",
        doc: "Most API keys one member holds in one mesh, revoked and expired ones of the last day included (older ones are purged at the next `apikey_create`); beyond it `apikey_create` answers `error` `too_many_keys`. `0` disables the bound.",
    },
    Setting {
        name: "REST_MAX_STREAMS_PER_KEY",
        default: "4",
        unit: "streams",
        doc: "Most SSE streams (`GET /api/v1/topics/:name/stream`) one API key holds open on one replica; beyond it 429 `{error:\"too_many_streams\"}`.",
    },
    Setting {
        name: "REST_MAX_STREAMS_PER_REPLICA",
        default: "1000",
        unit: "streams",
        doc: "Most SSE streams one replica holds open; beyond it 503 `{error:\"too_many_streams\"}`.",
    },
    Setting {
        name: "REST_STREAM_HEARTBEAT_MS",
        default: "30000",
        unit: "ms",
        doc: "Period of the SSE `heartbeat` event, and of the re-check of the stream's key (a revocation or a ban ends the stream at once: both publish `MembersChanged`).",
    },
    Setting {
        name: "REST_STREAM_POLL_MS",
        default: "2000",
        unit: "ms",
        doc: "The safety net of SSE streams: how often a stream reads the store for topic messages after its cursor even when no bus event woke it (a post wakes the topic's streams on every replica through the mesh bus at once).",
    },
    Setting {
        name: "REST_AUTH_FAILURES_PER_MIN",
        default: "30",
        unit: "per minute",
        doc: "Failed API-key lookups (`error.api_key_invalid`) allowed per client address per minute, cluster-wide; a failure beyond it answers 429 `{error:\"rate_limited\"}` instead of 401.",
    },
    Setting {
        name: "MAX_REST_BODY_BYTES",
        default: "65536",
        unit: "bytes",
        doc: "Largest REST v1 request body (413 `{error:\"body_too_large\"}`).",
    },
    Setting {
        name: "MAX_WEBHOOKS_PER_MESH",
        default: "20",
        unit: "webhooks",
        doc: "Most webhooks one mesh holds (`create_webhook` beyond it: `error` `too_many_webhooks`). `0` disables the bound. `list_webhooks` answers at most this many.",
    },
    Setting {
        name: "MAX_WEBHOOK_NAME_BYTES",
        default: "64",
        unit: "bytes",
        doc: "Longest webhook name (`create_webhook` beyond it: `error` `invalid_webhook`).",
    },
    Setting {
        name: "WEBHOOK_MAX_BODY_BYTES",
        default: "65536",
        unit: "bytes",
        doc: "Largest body of an inbound `POST /hook/<meshId>/<secret>` (beyond it: 413 `payload too large`, read no further).",
    },
    Setting {
        name: "WEBHOOK_RATE_PER_MIN",
        default: "60",
        unit: "calls/min",
        doc: "Inbound calls one webhook accepts per minute, cluster-wide (a token bucket in the presence backend, burst the same; beyond it: 429). `0` disables the limit.",
    },
    Setting {
        name: "MAX_WATCHES_PER_MEMBER",
        default: "20",
        unit: "watches",
        doc: "Most URL watches one member holds in one mesh (`watch` beyond it: `error` `invalid_args`). `0` disables the bound.",
    },
    Setting {
        name: "MAX_WATCHES_PER_MESH",
        default: "200",
        unit: "watches",
        doc: "Most URL watches one mesh holds (`watch` beyond it: `error` `invalid_args`). `0` disables the bound.",
    },
    Setting {
        name: "WATCH_MIN_INTERVAL_SECS",
        default: "5",
        unit: "s",
        doc: "Shortest `interval` of a URL watch; a shorter one is raised to it.",
    },
    Setting {
        name: "WATCH_MAX_INTERVAL_SECS",
        default: "86400",
        unit: "s",
        doc: "Longest `interval` of a URL watch; a longer one is lowered to it.",
    },
    Setting {
        name: "WATCH_FETCH_TIMEOUT_MS",
        default: "10000",
        unit: "ms",
        doc: "Time limit of one URL watch check (connect, request and body); a slower check fails and is skipped.",
    },
    Setting {
        name: "WATCH_MAX_RESPONSE_BYTES",
        default: "1048576",
        unit: "bytes",
        doc: "Most bytes of a watched URL's response body read per check; the rest is not read (the value is computed on what was read).",
    },
    Setting {
        name: "WATCH_LEASE_MS",
        default: "30000",
        unit: "ms",
        doc: "How long a replica holds a claimed watch while checking it (at least `WATCH_FETCH_TIMEOUT_MS` + 1000). A replica that dies mid-check delays that watch by at most this.",
    },
    Setting {
        name: "WATCH_POLL_INTERVAL_MS",
        default: "1000",
        unit: "ms",
        doc: "How often each replica's watcher claims due URL watches (`FOR UPDATE SKIP LOCKED`): a check runs at most this late.",
    },
    Setting {
        name: "WATCH_ALLOWED_NETS",
        default: "",
        unit: "addresses",
        doc: "Comma-separated addresses or CIDR blocks a URL watch may fetch although they are loopback, private, link-local, unspecified or cloud-metadata addresses (refused otherwise, after DNS resolution). Empty: none. For tests and trusted internal targets only.",
    },
    Setting {
        name: "MAX_WATCH_URL_BYTES",
        default: "2048",
        unit: "bytes",
        doc: "Longest watched URL (`error` `invalid_args`).",
    },
    Setting {
        name: "MAX_WATCH_FIELD_BYTES",
        default: "256",
        unit: "bytes",
        doc: "Longest `label`, `extract`, `notify_on`, header name or header value of a URL watch (`error` `invalid_args`).",
    },
    Setting {
        name: "MAX_WATCH_HEADERS",
        default: "16",
        unit: "headers",
        doc: "Most request headers of one URL watch (`error` `invalid_args`).",
    },
    Setting {
        name: "SCHEDULE_MAX_PER_MEMBER",
        default: "100",
        unit: "entries",
        doc: "Most active scheduled messages (one-shots not yet fired, crons not cancelled) one member holds (`schedule` beyond it: `error` `too_many_scheduled`).",
    },
    Setting {
        name: "SCHEDULE_MIN_CRON_PERIOD_MS",
        default: "60000",
        unit: "ms",
        doc: "Shortest time between two fires of one cron entry (at least 60000: cron has minute resolution); a closer match is skipped.",
    },
    Setting {
        name: "SCHEDULE_POLL_INTERVAL_MS",
        default: "1000",
        unit: "ms",
        doc: "How often each replica's scheduler claims due scheduled messages (`FOR UPDATE SKIP LOCKED`): a due message fires at most this late.",
    },
    Setting {
        name: "SCHEDULE_NOW_OFFSET_MS",
        default: "0",
        unit: "ms",
        doc: "Testing only: shifts this replica's scheduler clock (due times, cron evaluation) by this many ms, so a test can reach the next cron minute at once. Leave 0 in production.",
    },
    Setting {
        name: "CLOCK_MAX_PER_REPLICA",
        default: "256",
        unit: "clocks",
        doc: "Most simulation clocks one replica runs as their authority (ticks); further running clocks are left to other replicas.",
    },
    Setting {
        name: "CLOCK_LEASE_MS",
        default: "3000",
        unit: "ms",
        doc: "Lease of a clock's authority (at least 1000), renewed about every 250 ms; after the authority dies, another replica takes the clock over within it and resumes from the stored tick.",
    },
    Setting {
        name: "SHUTDOWN_DRAIN_MS",
        default: "5000",
        unit: "ms",
        doc: "On SIGTERM, sockets are closed 1001 spread evenly over this window.",
    },
    Setting {
        name: "SHUTDOWN_DEADLINE_MS",
        default: "15000",
        unit: "ms",
        doc: "On SIGTERM, the process exits at the latest after this long.",
    },
    Setting {
        name: "BROKER_SESSION_SECRET",
        default: "",
        unit: "string",
        doc: "HS256 key (at least 32 characters) of CLI session tokens; every replica needs the same. Unset: derived from `BROKER_ADMIN_TOKEN` (with a warning), else (dev mode) drawn at start.",
    },
    Setting {
        name: "BROKER_PUBLIC_URL",
        default: "",
        unit: "url",
        doc: "Public HTTP base of the broker (`https://mesh.example.com`): invite links, the device-code verification and paste-token URLs, web UI links, `Secure` cookies. Unset: derived from `Host` (and, from trusted proxies only, `X-Forwarded-Proto`/`Forwarded`).",
    },
    Setting {
        name: "BROKER_PUBLIC_WS_URL",
        default: "",
        unit: "url",
        doc: "Public WebSocket URL baked into invites and mesh lists (`wss://mesh.example.com/ws`). Unset: `BROKER_PUBLIC_URL` with `https`→`wss` (`http`→`ws`) and `/ws`.",
    },
    Setting {
        name: "BROKER_TRUSTED_PROXIES",
        default: "",
        unit: "addresses",
        doc: "Comma-separated addresses or CIDR blocks of reverse proxies whose `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` headers are believed (client address for rate limits, https detection). Empty: none.",
    },
    Setting {
        name: "BROKER_LEGACY_AUTH",
        default: "0",
        unit: "`0`/`1`",
        doc: "`1`: the legacy shim of `cli-routes.md` §3 (a `user_id` in the body or query, without a bearer, on five `/cli/` routes; loopback and private source addresses only). Anyone who can reach the broker from there can act as any user; a warning is logged at start.",
    },
    Setting {
        name: "CLI_SESSION_TTL_MS",
        default: "2592000000",
        unit: "ms",
        doc: "Lifetime of a CLI session token (`exp`; 30 days).",
    },
    Setting {
        name: "DEVICE_CODE_TTL_MS",
        default: "300000",
        unit: "ms",
        doc: "Lifetime of a device code (`POST /cli/device-code`), pending or approved and not yet polled.",
    },
    Setting {
        name: "WEB_SESSION_TTL_MS",
        default: "43200000",
        unit: "ms",
        doc: "Lifetime of a web UI sign-in (the session cookie).",
    },
    Setting {
        name: "CLI_INVITE_TTL_MS",
        default: "604800000",
        unit: "ms",
        doc: "Lifetime of an invite made by `POST /cli/mesh/<slug>/invite` when the body names none (7 days).",
    },
    Setting {
        name: "CLI_INVITE_MAX_USES",
        default: "1",
        unit: "uses",
        doc: "Uses of an invite made by `POST /cli/mesh/<slug>/invite` when the body names none.",
    },
    Setting {
        name: "LOGIN_RATE_PER_MIN",
        default: "10",
        unit: "attempts/minute",
        doc: "Web sign-in attempts per source address and per account (email), cluster-wide; beyond it 429. `0` disables the limit.",
    },
    Setting {
        name: "LOGIN_LOCKOUT_FAILURES",
        default: "5",
        unit: "attempts",
        doc: "Consecutive failed sign-ins that lock an account for `LOGIN_LOCKOUT_MS`. `0` disables lockout.",
    },
    Setting {
        name: "LOGIN_LOCKOUT_MS",
        default: "900000",
        unit: "ms",
        doc: "How long a locked account refuses sign-in (the operator's password reset unlocks it).",
    },
    Setting {
        name: "DEVICE_CODE_RATE_PER_MIN",
        default: "20",
        unit: "requests/minute",
        doc: "`POST /cli/device-code` per source address, cluster-wide; beyond it 429. `0` disables the limit.",
    },
    Setting {
        name: "MAX_PENDING_DEVICE_CODES",
        default: "10000",
        unit: "codes",
        doc: "Unexpired pending device codes, cluster-wide; beyond it `POST /cli/device-code` answers 503.",
    },
    Setting {
        name: "MAX_CLI_SESSIONS_PER_USER",
        default: "50",
        unit: "sessions",
        doc: "Live CLI sessions per user; a new one revokes the oldest beyond it.",
    },
    Setting {
        name: "OTEL_EXPORTER_OTLP_ENDPOINT",
        default: "",
        unit: "url",
        doc: "OTLP/HTTP base URL (`/v1/traces` is appended). Unset: no traces are exported.",
    },
    Setting {
        name: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        default: "",
        unit: "url",
        doc: "Full OTLP/HTTP traces URL; wins over `OTEL_EXPORTER_OTLP_ENDPOINT`.",
    },
    Setting {
        name: "OTEL_SERVICE_NAME",
        default: "mesh-broker",
        unit: "string",
        doc: "`service.name` of exported spans (`service.instance.id` is the per-start instance id, `broker.node.id` the node id).",
    },
    Setting {
        name: "OTEL_SDK_DISABLED",
        default: "false",
        unit: "bool",
        doc: "`true` turns trace export off even when an endpoint is set. The SDK also reads `OTEL_BSP_*` (batching).",
    },
    Setting {
        name: "OTEL_BSP_MAX_QUEUE_SIZE",
        default: "2048",
        unit: "spans",
        doc: "Most finished spans waiting for export, the batch being sent included; beyond it new spans are dropped and counted in `broker_otel_spans_dropped_total{reason=\"queue_full\"}`.",
    },
    Setting {
        name: "LOG_FORMAT",
        default: "text",
        unit: "`text`/`json`",
        doc: "Log line format.",
    },
    Setting {
        name: "RUST_LOG",
        default: "info",
        unit: "filter",
        doc: "Log level filter (tracing-subscriber `EnvFilter` syntax).",
    },
];

/// Where configuration values come from: the process environment in production, a map in tests.
pub trait Source {
    fn get(&self, name: &str) -> Option<String>;
    /// Every variable name the source holds, so that unknown `BROKER_*` names can be refused.
    fn names(&self) -> Vec<String>;
}

/// The process environment.
#[derive(Debug, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn names(&self) -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect()
    }
}

impl Source for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

/// A configuration value that cannot be used. Its display is the one line printed before
/// the broker exits with code 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {name}={value:?}: {why}")]
    Invalid {
        name: &'static str,
        value: String,
        why: String,
    },
    #[error("unknown setting {0} (see docs/env-vars.md for the list)")]
    Unknown(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything a replica needs to know, read once at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    /// `BROKER_INTERNAL_PORT`: `None` serves everything on `port`.
    pub internal_port: Option<u16>,
    pub internal_host: IpAddr,
    /// `None` only before dev mode generated one (see [`Config::ensure_admin_token`]).
    pub admin_token: Option<String>,
    pub node_id: String,
    /// This process's identity in the cluster: the node id and a random suffix, so a
    /// replica restarted under the same node id is never mistaken for the one that died
    /// (its presences are reaped, not inherited). Owns connection ids and heartbeats.
    pub instance_id: String,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    /// `REDIS_MODE=cluster`: `redis_url` lists seed nodes of a Redis Cluster.
    pub redis_cluster: bool,
    pub heartbeat_interval: Duration,
    pub node_dead_after: Duration,
    pub database_pool_size: usize,
    pub database_connect_timeout: Duration,
    pub expected_migration: Option<i64>,
    pub max_message_bytes: usize,
    pub max_message_fragments: usize,
    pub http_header_read_timeout: Duration,
    pub http_idle_timeout: Duration,
    pub max_http_connections: usize,
    pub http_max_header_bytes: usize,
    pub max_connections_per_mesh: usize,
    /// 0 disables the limit.
    pub send_burst: u32,
    /// 0 disables the limit.
    pub send_per_min: u32,
    /// `SESSION_HELLO_BURST_PER_MEMBER`; 0 disables the limit.
    pub session_hello_burst: u32,
    /// `SESSION_HELLOS_PER_MEMBER_PER_MIN`; 0 disables the limit.
    pub session_hellos_per_min: u32,
    pub lease_grace: Duration,
    pub hello_timeout: Duration,
    pub timestamp_skew: Duration,
    /// Signatures kept per replica as the second replay guard (`REPLAY_CACHE_MAX`).
    pub replay_cache_max: usize,
    /// `HANDSHAKE_CONCURRENCY` (0: unbounded).
    pub handshake_concurrency: usize,
    /// `HANDSHAKE_QUEUE_MAX`.
    pub handshake_queue_max: usize,
    /// `HANDSHAKE_QUEUE_WAIT_MS`.
    pub handshake_queue_wait: Duration,
    /// `HANDSHAKE_RETRY_AFTER_MS`.
    pub handshake_retry_after: Duration,
    /// `PRESENCE_CACHE_TTL_MS` (zero: no cache).
    pub presence_cache_ttl: Duration,
    pub session_key_memory: Duration,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub claim_lease: Duration,
    /// `DIRECT_PUSH`: doorbells carry committed direct messages.
    pub direct_push: bool,
    /// `DIRECT_LEASE_DELAY_MS`, capped at half the claim lease.
    pub direct_lease_delay: Duration,
    pub queue_ttl: Duration,
    pub outbound_queue_bytes: usize,
    pub held_queue_bytes: usize,
    pub hook_rate_per_min: u32,
    pub hook_pending: Duration,
    pub hook_pending_max: usize,
    pub audit_buffer: usize,
    pub audit_batch_max: usize,
    pub audit_flush: Duration,
    pub hook_max_cwd_bytes: usize,
    /// 0 disables the limit.
    pub hook_rate_per_source_per_min: u32,
    pub max_groups_per_presence: usize,
    pub max_group_name_bytes: usize,
    pub max_presence_field_bytes: usize,
    /// `MAX_STATE_KEY_BYTES`.
    pub max_state_key_bytes: usize,
    /// `MAX_STATE_KEYS_PER_MESH`; 0 disables the bound.
    pub max_state_keys_per_mesh: usize,
    pub max_memory_content_bytes: usize,
    pub max_memory_tags: usize,
    pub max_memory_tag_bytes: usize,
    pub max_recall_query_bytes: usize,
    /// `MAX_MEMORIES_PER_MESH`; 0 disables the bound.
    pub max_memories_per_mesh: usize,
    /// `MAX_CONTEXT_SUMMARY_BYTES`.
    pub max_context_summary_bytes: usize,
    /// `MAX_CONTEXT_ITEMS` (each of `filesRead`, `keyFindings`, `tags`).
    pub max_context_items: usize,
    pub max_context_item_bytes: usize,
    pub max_contexts_listed: usize,
    pub max_skill_name_bytes: usize,
    pub max_skill_description_bytes: usize,
    pub max_skill_instructions_bytes: usize,
    pub max_skill_manifest_bytes: usize,
    pub max_skill_tags: usize,
    pub max_skill_tag_bytes: usize,
    /// `MAX_SKILLS_PER_MESH`; 0 disables the bound.
    pub max_skills_per_mesh: usize,
    pub max_vault_key_bytes: usize,
    pub max_vault_blob_bytes: usize,
    pub max_vault_field_bytes: usize,
    /// `MAX_VAULT_ENTRIES_PER_MEMBER`; 0 disables the bound.
    pub max_vault_entries_per_member: usize,
    /// `MAX_TOPICS_PER_MESH`; 0 disables the bound.
    pub max_topics_per_mesh: usize,
    /// `MAX_TOPIC_MEMBERS`; 0 disables the bound.
    pub max_topic_members: usize,
    pub max_topic_name_chars: usize,
    pub max_topic_description_bytes: usize,
    pub topic_history_max_limit: usize,
    /// `FILES_ENABLED` (extensions §19.1).
    pub files_enabled: bool,
    pub max_file_bytes: u64,
    pub max_mesh_file_bytes: u64,
    /// 0 disables the bound.
    pub max_files_per_mesh: usize,
    pub max_file_name_bytes: usize,
    pub max_file_tags: usize,
    /// 0 disables the bound.
    pub max_file_keys: usize,
    pub max_file_accesses: usize,
    pub file_url_ttl: Duration,
    pub file_upload_timeout: Duration,
    /// `FILES_S3_*`: `None` keeps file bodies in the store.
    pub files_s3: Option<crate::objects::S3Config>,
    /// `PEER_RELAY_TIMEOUT_MS`.
    pub peer_relay_timeout: Duration,
    /// `MCP_CALL_TIMEOUT_MS`.
    pub mcp_call_timeout: Duration,
    /// `MAX_PENDING_PEER_REQUESTS_PER_PRESENCE`; 0 disables the bound.
    pub max_pending_peer_requests_per_presence: usize,
    /// `MAX_PENDING_PEER_REQUESTS_PER_REPLICA`; 0 disables the bound.
    pub max_pending_peer_requests_per_replica: usize,
    /// `MAX_MCP_SERVERS_PER_MESH`; 0 disables the bound.
    pub max_mcp_servers_per_mesh: usize,
    pub max_mcp_tools: usize,
    pub max_mcp_name_bytes: usize,
    pub max_mcp_registration_bytes: usize,
    /// `MAX_API_KEYS_PER_MEMBER`; 0 disables the bound.
    pub max_api_keys_per_member: usize,
    pub rest_max_streams_per_key: usize,
    pub rest_max_streams_per_replica: usize,
    pub rest_stream_heartbeat: Duration,
    pub rest_stream_poll: Duration,
    pub rest_auth_failures_per_min: u32,
    pub max_rest_body_bytes: usize,
    /// `MAX_WEBHOOKS_PER_MESH`; 0 disables the bound.
    pub max_webhooks_per_mesh: usize,
    pub max_webhook_name_bytes: usize,
    pub webhook_max_body_bytes: usize,
    /// `WEBHOOK_RATE_PER_MIN`; 0 disables the limit.
    pub webhook_rate_per_min: u32,
    /// `MAX_WATCHES_PER_MEMBER`; 0 disables the bound.
    pub max_watches_per_member: usize,
    /// `MAX_WATCHES_PER_MESH`; 0 disables the bound.
    pub max_watches_per_mesh: usize,
    pub watch_min_interval_secs: u32,
    pub watch_max_interval_secs: u32,
    pub watch_fetch_timeout: Duration,
    pub watch_max_response_bytes: usize,
    pub watch_lease: Duration,
    pub watch_poll_interval: Duration,
    /// `WATCH_ALLOWED_NETS`: blocks a watch may fetch despite the SSRF rules.
    pub watch_allowed_nets: Vec<crate::accounts::Cidr>,
    pub max_watch_url_bytes: usize,
    pub max_watch_field_bytes: usize,
    pub max_watch_headers: usize,
    pub max_task_title_bytes: usize,
    pub max_task_tags: usize,
    pub max_task_tag_bytes: usize,
    pub max_task_result_bytes: usize,
    /// 0 disables the bound.
    pub max_tasks_per_mesh: usize,
    pub max_stream_name_bytes: usize,
    /// 0 disables the bound.
    pub max_streams_per_mesh: usize,
    /// 0 disables the bound.
    pub max_stream_subscriptions_per_presence: usize,
    /// `SCHEDULE_MAX_PER_MEMBER`.
    pub schedule_max_per_member: usize,
    /// `SCHEDULE_MIN_CRON_PERIOD_MS`, at least one minute.
    pub schedule_min_cron_period: Duration,
    pub schedule_poll_interval: Duration,
    /// `SCHEDULE_NOW_OFFSET_MS` (tests only).
    pub schedule_now_offset_ms: i64,
    pub clock_max_per_replica: usize,
    pub clock_lease: Duration,
    pub shutdown_drain: Duration,
    pub shutdown_deadline: Duration,
    /// Where spans are exported (OTLP/HTTP); `None`: traces off.
    pub otlp_traces_endpoint: Option<String>,
    pub otel_service_name: String,
    /// Most finished spans waiting for export (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub otel_queue_spans: usize,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// Accounts and the logged-in CLI routes (`accounts::AccountsConfig`).
    pub accounts: crate::accounts::AccountsConfig,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Env)
    }

    /// Reads every setting from `src`, applying defaults, and refuses unknown `BROKER_*` names.
    pub fn from_source(src: &dyn Source) -> Result<Self, ConfigError> {
        for name in src.names() {
            if name.starts_with("BROKER_") && !SETTINGS.iter().any(|s| s.name == name) {
                return Err(ConfigError::Unknown(name));
            }
        }
        let r = Reader { src };
        let config = Config {
            host: r.parse("BROKER_HOST")?,
            port: r.parse("BROKER_PORT")?,
            internal_port: match r.optional("BROKER_INTERNAL_PORT") {
                Some(_) => Some(r.parse("BROKER_INTERNAL_PORT")?),
                None => None,
            },
            internal_host: r.parse("BROKER_INTERNAL_HOST")?,
            admin_token: r.optional("BROKER_ADMIN_TOKEN"),
            node_id: r
                .optional("BROKER_NODE_ID")
                .unwrap_or_else(|| format!("node-{}", crate::ids::random_id(8))),
            instance_id: String::new(),
            database_url: r.optional("DATABASE_URL"),
            redis_url: r.optional("REDIS_URL"),
            redis_prefix: r.value("REDIS_PREFIX"),
            redis_cluster: match r.value("REDIS_MODE").as_str() {
                "single" => false,
                "cluster" => true,
                other => {
                    return Err(ConfigError::Invalid {
                        name: "REDIS_MODE",
                        value: other.into(),
                        why: "must be single or cluster".into(),
                    });
                }
            },
            heartbeat_interval: r.positive_millis("HEARTBEAT_INTERVAL_MS")?,
            node_dead_after: r.positive_millis("NODE_DEAD_AFTER_MS")?,
            database_pool_size: r.parse_min("DATABASE_POOL_SIZE", 1)?,
            database_connect_timeout: r.millis("DATABASE_CONNECT_TIMEOUT_MS")?,
            expected_migration: match r.optional("EXPECTED_MIGRATION") {
                Some(_) => Some(r.parse("EXPECTED_MIGRATION")?),
                None => None,
            },
            max_message_bytes: r.parse_min("MAX_MESSAGE_BYTES", 256)?,
            max_message_fragments: r.parse_min("MAX_MESSAGE_FRAGMENTS", 1)?,
            http_header_read_timeout: r.positive_millis("HTTP_HEADER_READ_TIMEOUT_MS")?,
            http_idle_timeout: r.positive_millis("HTTP_IDLE_TIMEOUT_MS")?,
            max_http_connections: r.parse_min("MAX_HTTP_CONNECTIONS", 1)?,
            http_max_header_bytes: r.parse_min("HTTP_MAX_HEADER_BYTES", 8192)?,
            max_connections_per_mesh: r.parse_min("MAX_CONNECTIONS_PER_MESH", 1)?,
            send_burst: r.parse("BROKER_SEND_BURST")?,
            send_per_min: r.parse("BROKER_SEND_PER_MIN")?,
            session_hello_burst: r.parse("SESSION_HELLO_BURST_PER_MEMBER")?,
            session_hellos_per_min: r.parse("SESSION_HELLOS_PER_MEMBER_PER_MIN")?,
            lease_grace: r.millis("LEASE_GRACE_MS")?,
            hello_timeout: r.positive_millis("HELLO_TIMEOUT_MS")?,
            timestamp_skew: r.millis("TIMESTAMP_SKEW_MS")?,
            replay_cache_max: r.parse("REPLAY_CACHE_MAX")?,
            handshake_concurrency: r.parse("HANDSHAKE_CONCURRENCY")?,
            handshake_queue_max: r.parse("HANDSHAKE_QUEUE_MAX")?,
            handshake_queue_wait: r.millis("HANDSHAKE_QUEUE_WAIT_MS")?,
            handshake_retry_after: r.positive_millis("HANDSHAKE_RETRY_AFTER_MS")?,
            presence_cache_ttl: r.millis("PRESENCE_CACHE_TTL_MS")?,
            session_key_memory: r.millis("SESSION_KEY_MEMORY_MS")?,
            ping_interval: r.positive_millis("PING_INTERVAL_MS")?,
            pong_timeout: r.positive_millis("PONG_TIMEOUT_MS")?,
            claim_lease: r.positive_millis("CLAIM_LEASE_MS")?,
            direct_push: r.parse("DIRECT_PUSH")?,
            direct_lease_delay: r
                .millis("DIRECT_LEASE_DELAY_MS")?
                .min(r.positive_millis("CLAIM_LEASE_MS")? / 2),
            queue_ttl: r.millis("QUEUE_TTL_MS")?,
            outbound_queue_bytes: r.parse_min("OUTBOUND_QUEUE_BYTES", 1024)?,
            held_queue_bytes: r.parse("HELD_QUEUE_BYTES")?,
            hook_rate_per_min: r.parse("HOOK_RATE_PER_MIN")?,
            hook_pending: r.millis("HOOK_PENDING_MS")?,
            hook_pending_max: r.parse("HOOK_PENDING_MAX")?,
            audit_buffer: r.parse_min("AUDIT_BUFFER", 1)?,
            audit_batch_max: r.parse_min("AUDIT_BATCH_MAX", 1)?,
            audit_flush: r.millis("AUDIT_FLUSH_MS")?,
            hook_max_cwd_bytes: r.parse_min("HOOK_MAX_CWD_BYTES", 1)?,
            hook_rate_per_source_per_min: r.parse("HOOK_RATE_PER_SOURCE_PER_MIN")?,
            max_groups_per_presence: r.parse("MAX_GROUPS_PER_PRESENCE")?,
            max_group_name_bytes: r.parse_min("MAX_GROUP_NAME_BYTES", 1)?,
            max_presence_field_bytes: r.parse_min("MAX_PRESENCE_FIELD_BYTES", 64)?,
            max_state_key_bytes: r.parse_min("MAX_STATE_KEY_BYTES", 1)?,
            max_state_keys_per_mesh: r.parse("MAX_STATE_KEYS_PER_MESH")?,
            max_memory_content_bytes: r.parse_min("MAX_MEMORY_CONTENT_BYTES", 1)?,
            max_memory_tags: r.parse("MAX_MEMORY_TAGS")?,
            max_memory_tag_bytes: r.parse_min("MAX_MEMORY_TAG_BYTES", 1)?,
            max_recall_query_bytes: r.parse_min("MAX_RECALL_QUERY_BYTES", 1)?,
            max_memories_per_mesh: r.parse("MAX_MEMORIES_PER_MESH")?,
            max_context_summary_bytes: r.parse_min("MAX_CONTEXT_SUMMARY_BYTES", 1)?,
            max_context_items: r.parse("MAX_CONTEXT_ITEMS")?,
            max_context_item_bytes: r.parse_min("MAX_CONTEXT_ITEM_BYTES", 1)?,
            max_contexts_listed: r.parse_min("MAX_CONTEXTS_LISTED", 1)?,
            max_skill_name_bytes: r.parse_min("MAX_SKILL_NAME_BYTES", 1)?,
            max_skill_description_bytes: r.parse("MAX_SKILL_DESCRIPTION_BYTES")?,
            max_skill_instructions_bytes: r.parse_min("MAX_SKILL_INSTRUCTIONS_BYTES", 1)?,
            max_skill_manifest_bytes: r.parse_min("MAX_SKILL_MANIFEST_BYTES", 2)?,
            max_skill_tags: r.parse("MAX_SKILL_TAGS")?,
            max_skill_tag_bytes: r.parse_min("MAX_SKILL_TAG_BYTES", 1)?,
            max_skills_per_mesh: r.parse("MAX_SKILLS_PER_MESH")?,
            max_vault_key_bytes: r.parse_min("MAX_VAULT_KEY_BYTES", 1)?,
            max_vault_blob_bytes: r.parse_min("MAX_VAULT_BLOB_BYTES", 16)?,
            max_vault_field_bytes: r.parse("MAX_VAULT_FIELD_BYTES")?,
            max_vault_entries_per_member: r.parse("MAX_VAULT_ENTRIES_PER_MEMBER")?,
            max_topics_per_mesh: r.parse("MAX_TOPICS_PER_MESH")?,
            max_topic_members: r.parse("MAX_TOPIC_MEMBERS")?,
            max_topic_name_chars: r.parse_min("MAX_TOPIC_NAME_CHARS", 1)?,
            max_topic_description_bytes: r.parse("MAX_TOPIC_DESCRIPTION_BYTES")?,
            topic_history_max_limit: r.parse_min("TOPIC_HISTORY_MAX_LIMIT", 1)?,
            files_enabled: r.parse("FILES_ENABLED")?,
            max_file_bytes: r.parse_min("MAX_FILE_BYTES", 1)?,
            max_mesh_file_bytes: r.parse_min("MAX_MESH_FILE_BYTES", 1)?,
            max_files_per_mesh: r.parse("MAX_FILES_PER_MESH")?,
            max_file_name_bytes: r.parse_min("MAX_FILE_NAME_BYTES", 1)?,
            max_file_tags: r.parse("MAX_FILE_TAGS")?,
            max_file_keys: r.parse("MAX_FILE_KEYS")?,
            max_file_accesses: r.parse_min("MAX_FILE_ACCESSES", 1)?,
            file_url_ttl: r.positive_millis("FILE_URL_TTL_MS")?,
            file_upload_timeout: r.positive_millis("FILE_UPLOAD_TIMEOUT_MS")?,
            files_s3: files_s3(&r)?,
            peer_relay_timeout: r.positive_millis("PEER_RELAY_TIMEOUT_MS")?,
            mcp_call_timeout: r.positive_millis("MCP_CALL_TIMEOUT_MS")?,
            max_pending_peer_requests_per_presence: r
                .parse("MAX_PENDING_PEER_REQUESTS_PER_PRESENCE")?,
            max_pending_peer_requests_per_replica: r
                .parse("MAX_PENDING_PEER_REQUESTS_PER_REPLICA")?,
            max_mcp_servers_per_mesh: r.parse("MAX_MCP_SERVERS_PER_MESH")?,
            max_mcp_tools: r.parse("MAX_MCP_TOOLS")?,
            max_mcp_name_bytes: r.parse_min("MAX_MCP_NAME_BYTES", 1)?,
            max_mcp_registration_bytes: r.parse_min("MAX_MCP_REGISTRATION_BYTES", 64)?,
            max_api_keys_per_member: r.parse("MAX_API_KEYS_PER_MEMBER")?,
            rest_max_streams_per_key: r.parse("REST_MAX_STREAMS_PER_KEY")?,
            rest_max_streams_per_replica: r.parse("REST_MAX_STREAMS_PER_REPLICA")?,
            rest_stream_heartbeat: r.positive_millis("REST_STREAM_HEARTBEAT_MS")?,
            rest_stream_poll: r.positive_millis("REST_STREAM_POLL_MS")?,
            rest_auth_failures_per_min: r.parse("REST_AUTH_FAILURES_PER_MIN")?,
            max_rest_body_bytes: r.parse("MAX_REST_BODY_BYTES")?,
            max_webhooks_per_mesh: r.parse("MAX_WEBHOOKS_PER_MESH")?,
            max_webhook_name_bytes: r.parse_min("MAX_WEBHOOK_NAME_BYTES", 1)?,
            webhook_max_body_bytes: r.parse_min("WEBHOOK_MAX_BODY_BYTES", 2)?,
            webhook_rate_per_min: r.parse("WEBHOOK_RATE_PER_MIN")?,
            max_watches_per_member: r.parse("MAX_WATCHES_PER_MEMBER")?,
            max_watches_per_mesh: r.parse("MAX_WATCHES_PER_MESH")?,
            watch_min_interval_secs: r.parse_min("WATCH_MIN_INTERVAL_SECS", 1)?,
            watch_max_interval_secs: r.parse_min("WATCH_MAX_INTERVAL_SECS", 1)?,
            watch_fetch_timeout: r.positive_millis("WATCH_FETCH_TIMEOUT_MS")?,
            watch_max_response_bytes: r.parse_min("WATCH_MAX_RESPONSE_BYTES", 1)?,
            // Checked below: a lease shorter than a check would let a second replica in.
            watch_lease: r.positive_millis("WATCH_LEASE_MS")?,
            watch_poll_interval: r.positive_millis("WATCH_POLL_INTERVAL_MS")?,
            watch_allowed_nets: {
                let mut nets = Vec::new();
                let raw = r.value("WATCH_ALLOWED_NETS");
                for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    nets.push(crate::accounts::Cidr::parse(part).ok_or_else(|| {
                        r.invalid(
                            "WATCH_ALLOWED_NETS",
                            &raw,
                            format!("{part:?} is not an address or CIDR block"),
                        )
                    })?);
                }
                nets
            },
            max_watch_url_bytes: r.parse_min("MAX_WATCH_URL_BYTES", 16)?,
            max_watch_field_bytes: r.parse_min("MAX_WATCH_FIELD_BYTES", 1)?,
            max_watch_headers: r.parse("MAX_WATCH_HEADERS")?,
            max_task_title_bytes: r.parse_min("MAX_TASK_TITLE_BYTES", 1)?,
            max_task_tags: r.parse("MAX_TASK_TAGS")?,
            max_task_tag_bytes: r.parse_min("MAX_TASK_TAG_BYTES", 1)?,
            max_task_result_bytes: r.parse("MAX_TASK_RESULT_BYTES")?,
            max_tasks_per_mesh: r.parse("MAX_TASKS_PER_MESH")?,
            max_stream_name_bytes: r.parse_min("MAX_STREAM_NAME_BYTES", 1)?,
            max_streams_per_mesh: r.parse("MAX_STREAMS_PER_MESH")?,
            max_stream_subscriptions_per_presence: r
                .parse("MAX_STREAM_SUBSCRIPTIONS_PER_PRESENCE")?,
            schedule_max_per_member: r.parse("SCHEDULE_MAX_PER_MEMBER")?,
            schedule_min_cron_period: Duration::from_millis(
                r.parse_min::<u64>("SCHEDULE_MIN_CRON_PERIOD_MS", 60_000)?
                    .min(MAX_MILLIS),
            ),
            schedule_poll_interval: r.positive_millis("SCHEDULE_POLL_INTERVAL_MS")?,
            schedule_now_offset_ms: r
                .parse::<i64>("SCHEDULE_NOW_OFFSET_MS")?
                .clamp(-(MAX_MILLIS as i64), MAX_MILLIS as i64),
            clock_max_per_replica: r.parse("CLOCK_MAX_PER_REPLICA")?,
            // Renewed every 250 ms: a shorter lease would lapse between renewals.
            clock_lease: Duration::from_millis(
                r.parse_min::<u64>("CLOCK_LEASE_MS", 1000)?.min(MAX_MILLIS),
            ),
            shutdown_drain: r.millis("SHUTDOWN_DRAIN_MS")?,
            shutdown_deadline: r.millis("SHUTDOWN_DEADLINE_MS")?,
            otlp_traces_endpoint: match r.value("OTEL_SDK_DISABLED").as_str() {
                "true" => None,
                "false" => r
                    .optional("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                    .or_else(|| {
                        r.optional("OTEL_EXPORTER_OTLP_ENDPOINT")
                            .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
                    }),
                other => {
                    return Err(r.invalid("OTEL_SDK_DISABLED", other, "expected true or false"));
                }
            },
            otel_service_name: r.value("OTEL_SERVICE_NAME"),
            otel_queue_spans: r.parse_min("OTEL_BSP_MAX_QUEUE_SIZE", 1)?,
            log_format: match r.value("LOG_FORMAT").as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => return Err(r.invalid("LOG_FORMAT", other, "expected text or json")),
            },
            log_filter: r.value("RUST_LOG"),
            accounts: crate::accounts::AccountsConfig::from_source(src)?,
        };
        let mut config = config;
        config.instance_id = format!("{}~{}", config.node_id, crate::ids::random_id(6));
        if config.node_dead_after <= config.heartbeat_interval {
            return Err(ConfigError::Invalid {
                name: "NODE_DEAD_AFTER_MS",
                value: config.node_dead_after.as_millis().to_string(),
                why: "must be longer than HEARTBEAT_INTERVAL_MS, or live replicas are reaped"
                    .into(),
            });
        }
        if config.pong_timeout <= config.ping_interval {
            return Err(ConfigError::Invalid {
                name: "PONG_TIMEOUT_MS",
                value: config.pong_timeout.as_millis().to_string(),
                why: "must be longer than PING_INTERVAL_MS, or every idle socket is terminated"
                    .into(),
            });
        }
        if config.watch_lease < config.watch_fetch_timeout + Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                name: "WATCH_LEASE_MS",
                value: config.watch_lease.as_millis().to_string(),
                why: "must be at least WATCH_FETCH_TIMEOUT_MS + 1000, or a check could outlive its lease"
                    .into(),
            });
        }
        if config.redis_url.is_some() && config.database_url.is_none() {
            return Err(ConfigError::Invalid {
                name: "REDIS_URL",
                value: "(set)".into(),
                why: "cluster mode needs DATABASE_URL as well".into(),
            });
        }
        Ok(config)
    }

    /// Dev mode: no durable store and no shared bus, so one node with memory backends.
    pub fn is_dev_mode(&self) -> bool {
        self.database_url.is_none() && self.redis_url.is_none()
    }

    /// Generates an admin token when none is configured; returns it when it was generated,
    /// so that the caller prints it exactly once.
    pub fn ensure_admin_token(&mut self) -> Option<String> {
        if self.admin_token.is_some() {
            return None;
        }
        let token = crate::ids::random_id(40);
        self.admin_token = Some(token.clone());
        Some(token)
    }

    /// A configuration for tests: defaults, with `overrides` applied.
    pub fn for_tests(overrides: &[(&str, &str)]) -> Result<Self, ConfigError> {
        let map: BTreeMap<String, String> = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::from_source(&map)
    }
}

/// The `FILES_S3_*` settings: `None` without an endpoint.
fn files_s3(r: &Reader<'_>) -> Result<Option<crate::objects::S3Config>, ConfigError> {
    let Some(raw) = r.optional("FILES_S3_ENDPOINT") else {
        return Ok(None);
    };
    let endpoint = url::Url::parse(&raw).map_err(|e| r.invalid("FILES_S3_ENDPOINT", &raw, e))?;
    let required = |name: &str| {
        r.optional(name)
            .ok_or_else(|| r.invalid(name, "", "required with FILES_S3_ENDPOINT"))
    };
    let c = crate::objects::S3Config {
        endpoint,
        bucket: required("FILES_S3_BUCKET")?,
        region: r.value("FILES_S3_REGION"),
        access_key_id: required("FILES_S3_ACCESS_KEY_ID")?,
        secret_access_key: zeroize::Zeroizing::new(required("FILES_S3_SECRET_ACCESS_KEY")?),
        path_style: r.parse("FILES_S3_PATH_STYLE")?,
        presign: r.parse("FILES_S3_PRESIGN")?,
        prefix: r.value("FILES_S3_PREFIX"),
        part_bytes: r.parse_min("FILES_S3_PART_BYTES", crate::objects::MIN_PART_BYTES)?,
        timeout: r.positive_millis("FILES_S3_TIMEOUT_MS")?,
        sweep_interval: r.positive_millis("FILES_S3_SWEEP_INTERVAL_MS")?,
    };
    crate::objects::Objects::new(&c).map_err(|e| {
        r.invalid(
            "FILES_S3_ENDPOINT",
            c.endpoint.as_str(),
            format!("no usable bucket URL with FILES_S3_BUCKET and FILES_S3_PATH_STYLE: {e}"),
        )
    })?;
    Ok(Some(c))
}

/// Largest accepted value of a `*_MS` setting (365 days).
const MAX_MILLIS: u64 = 365 * 24 * 3_600_000;

struct Reader<'a> {
    src: &'a dyn Source,
}

impl Reader<'_> {
    fn setting(name: &str) -> &'static Setting {
        SETTINGS
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("setting {name} is not declared in SETTINGS"))
    }

    fn optional(&self, name: &str) -> Option<String> {
        self.src.get(name).filter(|v| !v.is_empty())
    }

    fn value(&self, name: &str) -> String {
        self.optional(name)
            .unwrap_or_else(|| Self::setting(name).default.to_string())
    }

    fn invalid(&self, name: &str, value: &str, why: impl ToString) -> ConfigError {
        ConfigError::Invalid {
            name: Self::setting(name).name,
            value: value.to_string(),
            why: why.to_string(),
        }
    }

    fn parse<T: std::str::FromStr>(&self, name: &str) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        let value = self.value(name);
        value
            .trim()
            .parse()
            .map_err(|e: T::Err| self.invalid(name, &value, e))
    }

    fn parse_min<T>(&self, name: &str, min: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
        T::Err: std::fmt::Display,
    {
        let v: T = self.parse(name)?;
        if v < min {
            return Err(self.invalid(name, &v.to_string(), format!("must be at least {min}")));
        }
        Ok(v)
    }

    /// A duration in milliseconds, at most [`MAX_MILLIS`]: larger values overflow the
    /// clock arithmetic (`Instant + Duration` panics, `as i64` wraps negative).
    fn millis(&self, name: &str) -> Result<Duration, ConfigError> {
        let ms = self.parse::<u64>(name)?;
        if ms > MAX_MILLIS {
            return Err(self.invalid(
                name,
                &ms.to_string(),
                format!("must be at most {MAX_MILLIS} (365 days)"),
            ));
        }
        Ok(Duration::from_millis(ms))
    }

    /// A duration that paces a timer or bounds a wait: `0` would panic (`interval(0)`) or
    /// spin, so it is refused.
    fn positive_millis(&self, name: &str) -> Result<Duration, ConfigError> {
        let d = self.millis(name)?;
        if d.is_zero() {
            return Err(self.invalid(name, "0", "must be at least 1"));
        }
        Ok(d)
    }
}

/// Renders `docs/env-vars.md` from [`SETTINGS`].
pub fn env_vars_markdown() -> String {
    let mut out = String::from(
        "# Environment variables\n\n\
         Generated from `broker/src/config.rs` by `cargo test -p broker --lib config`; do not edit by hand.\n\
         An invalid value, or an unknown `BROKER_*` name, stops the broker with one line and exit code 64.\n\n\
         | variable | default | unit | meaning |\n|---|---|---|---|\n",
    );
    for s in SETTINGS {
        let default = if s.default.is_empty() {
            "–".to_string()
        } else {
            format!("`{}`", s.default)
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            s.name, default, s.unit, s.doc
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::for_tests(&[]).expect("defaults are valid");
        assert_eq!(c.port, 7900);
        assert_eq!(c.max_message_bytes, 65_536);
        assert_eq!(c.max_connections_per_mesh, 100);
        assert_eq!((c.send_burst, c.send_per_min), (10, 60));
        assert_eq!(c.lease_grace, Duration::from_millis(90_000));
        assert!(c.is_dev_mode());
        assert!(c.admin_token.is_none());
    }

    #[test]
    fn invalid_and_unknown_values_are_refused_with_the_name() {
        let e = Config::for_tests(&[("BROKER_PORT", "seventy")]).unwrap_err();
        assert!(e.to_string().contains("BROKER_PORT"), "{e}");
        let e = Config::for_tests(&[("BROKER_PROT", "1")]).unwrap_err();
        assert!(e.to_string().contains("unknown setting BROKER_PROT"), "{e}");
        let e = Config::for_tests(&[("MAX_MESSAGE_BYTES", "3")]).unwrap_err();
        assert!(e.to_string().contains("at least"), "{e}");
        let e = Config::for_tests(&[("LOG_FORMAT", "xml")]).unwrap_err();
        assert!(e.to_string().contains("LOG_FORMAT"), "{e}");
    }

    #[test]
    fn env_vars_doc_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/env-vars.md");
        let want = env_vars_markdown();
        let have = std::fs::read_to_string(path).unwrap_or_default();
        if have != want {
            if std::env::var_os("UPDATE_DOCS").is_some() {
                std::fs::write(path, &want).expect("write docs/env-vars.md");
            } else {
                panic!(
                    "docs/env-vars.md is stale: run `UPDATE_DOCS=1 cargo test -p broker --lib config`"
                );
            }
        }
    }
}
