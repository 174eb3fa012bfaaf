//! Every metric the broker exports, declared in one place.
//!
//! Names follow `broker_<noun>_<unit>[_total]`; label values come from closed sets (reasons,
//! priorities, capabilities), never from a mesh id or a key.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriorityLabel {
    pub priority: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CapLabel {
    pub cap: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub path: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    pub worker: &'static str,
}

/// The broker's metrics; cloning shares them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections_total: Counter,
    pub connections_active: Gauge,
    pub connections_rejected: Family<ReasonLabel, Counter>,
    pub session_keys_refused: Family<ReasonLabel, Counter>,
    pub messages_routed: Family<PriorityLabel, Counter>,
    pub messages_rejected: Family<ReasonLabel, Counter>,
    pub messages_dropped_by_grant: Family<CapLabel, Counter>,
    pub pushes_total: Counter,
    pub direct_pushes: Family<PathLabel, Counter>,
    pub direct_leases_lost: Counter,
    pub queue_depth: Gauge,
    pub handshake_seconds: Histogram,
    pub delivery_seconds: Histogram,
    pub slow_consumer_closes: Counter,
    pub outbound_queue_bytes: Gauge,
    pub presences_expired: Counter,
    pub audit_write_failures: Counter,
    pub audit_buffered: Gauge,
    pub audit_buffer_full: Counter,
    pub db_healthy: Gauge,
    pub presences_reaped: Counter,
    pub pubsub_healthy: Gauge,
    pub bus_publish_seconds: Histogram,
    pub store_batch_rows: Histogram,
    pub store_pool_wait_seconds: Histogram,
    pub schema_version: Gauge,
    pub replica_heals: Family<ReasonLabel, Counter>,
    pub redis_data_losses: Counter,
    pub replay_cache_evictions: Counter,
    pub hook_requests_rejected: Family<ReasonLabel, Counter>,
    pub hook_pending_dropped: Counter,
    pub presence_updates_rejected: Family<ReasonLabel, Counter>,
    pub replies_too_large: Family<ReasonLabel, Counter>,
    pub ws_messages_refused: Family<ReasonLabel, Counter>,
    pub ws_pongs_coalesced: Counter,
    pub http_connections_open: Gauge,
    pub http_connections_closed: Family<ReasonLabel, Counter>,
    pub http_accept_errors: Counter,
    pub worker_restarts: Family<WorkerLabel, Counter>,
    pub workers_running: Family<WorkerLabel, Gauge>,
    pub legacy_auth_hits: Counter,
    pub account_requests_rejected: Family<ReasonLabel, Counter>,
    pub task_requests_refused: Family<ReasonLabel, Counter>,
    pub stream_requests_refused: Family<ReasonLabel, Counter>,
    pub state_requests_refused: Family<ReasonLabel, Counter>,
    pub memory_requests_refused: Family<ReasonLabel, Counter>,
    pub context_requests_refused: Family<ReasonLabel, Counter>,
    pub skill_requests_refused: Family<ReasonLabel, Counter>,
    pub vault_requests_refused: Family<ReasonLabel, Counter>,
    pub topic_requests_refused: Family<ReasonLabel, Counter>,
    pub topics_created: Counter,
    pub topic_posts: Counter,
    pub topic_notifications: Counter,
    pub topic_history_clamped: Counter,
    pub file_requests_refused: Family<ReasonLabel, Counter>,
    pub file_bytes_uploaded: Counter,
    pub file_bytes_downloaded: Counter,
    pub file_objects_swept: Counter,
    pub webhook_requests_refused: Family<ReasonLabel, Counter>,
    pub webhook_deliveries: Counter,
    pub watch_requests_refused: Family<ReasonLabel, Counter>,
    pub watch_checks: Family<ReasonLabel, Counter>,
    pub apikey_requests_refused: Family<ReasonLabel, Counter>,
    pub rest_requests_refused: Family<ReasonLabel, Counter>,
    pub rest_streams_open: Gauge,
    pub relay_requests_refused: Family<ReasonLabel, Counter>,
    pub mcp_requests_refused: Family<ReasonLabel, Counter>,
    pub peer_requests_pending: Gauge,
    pub peer_requests_finished: Family<ReasonLabel, Counter>,
    pub state_changes_stale: Counter,
    pub scheduled_rejected: Family<ReasonLabel, Counter>,
    pub scheduled_fires: Family<ReasonLabel, Counter>,
    pub clock_ticks: Counter,
    pub clocks_held: Gauge,
    pub handshakes_in_flight: Gauge,
    pub handshakes_waiting: Gauge,
    pub handshakes_shed: Family<ReasonLabel, Counter>,
    pub presence_cache: Family<ReasonLabel, Counter>,
}

/// `(name, help)` of every metric, as the registry exposes them (docs and tests read it).
pub const CATALOGUE: &[(&str, &str, &str)] = &[
    (
        "broker_connections_total",
        "counter",
        "WebSocket connections accepted (upgrades).",
    ),
    (
        "broker_connections_active",
        "gauge",
        "WebSocket connections open on this replica.",
    ),
    (
        "broker_connections_rejected_total",
        "counter",
        "Handshakes refused, by error code (`reason`).",
    ),
    (
        "broker_session_keys_refused_total",
        "counter",
        "`hello`s refused `bad_session_pubkey` because their announced key belongs to another member, by `reason` (member_key, proven_session_key, live_routing_key).",
    ),
    (
        "broker_messages_routed_total",
        "counter",
        "Accepted sends, by `priority` (`stream`: each stream `publish`).",
    ),
    (
        "broker_messages_rejected_total",
        "counter",
        "Sends refused, by `reason` (rate_limit, too_large, no_target, grant, invalid, store, revoked; outcome_unknown: the commit outcome is unknown and the client should retry with the same client_message_id).",
    ),
    (
        "broker_messages_dropped_by_grant_total",
        "counter",
        "Recipients skipped or sends refused by a grant, by capability (`cap`).",
    ),
    (
        "broker_pushes_total",
        "counter",
        "Message pushes written to local sockets (direct and fan-out).",
    ),
    (
        "broker_direct_pushes_total",
        "counter",
        "Direct messages pushed to local sockets, by `path`: `doorbell` (the bus event carried the committed message: no claim) or `claim` (claimed from the store: a reconnect, a re-push after the lease, an older replica's doorbell).",
    ),
    (
        "broker_direct_leases_lost_total",
        "counter",
        "Direct messages pushed by doorbell whose lease was not recorded when it was due (`DIRECT_LEASE_DELAY_MS` after the push): confirmed meanwhile (the usual case), claimed by another connection first (which pushes them too), or the store failed.",
    ),
    (
        "broker_queue_depth",
        "gauge",
        "Undelivered direct messages in the store.",
    ),
    (
        "broker_handshake_seconds",
        "histogram",
        "From socket open to hello_ack.",
    ),
    (
        "broker_delivery_seconds",
        "histogram",
        "From a direct send's acceptance to its push on a socket of this replica.",
    ),
    (
        "broker_slow_consumer_closes_total",
        "counter",
        "Sockets closed 1013 because their outbound queue overflowed.",
    ),
    (
        "broker_outbound_queue_bytes",
        "gauge",
        "Bytes waiting in the outbound queues of this replica's sockets.",
    ),
    (
        "broker_presences_expired_total",
        "counter",
        "Presences removed after their lease grace ended.",
    ),
    (
        "broker_audit_write_failures_total",
        "counter",
        "Audit events whose append failed (counted per event of a failed batch; each failure is also logged).",
    ),
    (
        "broker_audit_buffered",
        "gauge",
        "Audit events waiting in the buffer (`AUDIT_BUFFER`) to be appended.",
    ),
    (
        "broker_audit_buffer_full_total",
        "counter",
        "Audit events that found the buffer full and were appended on a task of their own.",
    ),
    (
        "broker_presences_reaped_total",
        "counter",
        "Live presences of dead replicas ended by this replica's reaper.",
    ),
    (
        "broker_pubsub_healthy",
        "gauge",
        "1 while the bus proved publish/subscribe end to end at the last check, else 0.",
    ),
    (
        "broker_bus_publish_seconds",
        "histogram",
        "Time to hand one event to the bus (Redis PUBLISH in cluster mode).",
    ),
    (
        "broker_store_batch_rows",
        "histogram",
        "Rows written per group commit (sends) or batched client_ack update (PostgreSQL).",
    ),
    (
        "broker_store_pool_wait_seconds",
        "histogram",
        "Time spent waiting for a PostgreSQL connection from the pool.",
    ),
    (
        "broker_schema_version",
        "gauge",
        "The applied schema migration (0 in dev mode).",
    ),
    (
        "broker_replica_heals_total",
        "counter",
        "Times this replica found it may have been declared dead and closed its sockets 1001 to heal, by `reason` (clock_gap, reaped).",
    ),
    (
        "broker_redis_data_losses_total",
        "counter",
        "Redis data losses (a changed epoch: a restart without persistence) this replica noticed and re-synced after.",
    ),
    (
        "broker_replay_cache_evictions_total",
        "counter",
        "Accepted hello signatures dropped from this replica's replay cache before their window ended, because it held `REPLAY_CACHE_MAX`.",
    ),
    (
        "broker_db_healthy",
        "gauge",
        "1 while the store answered its last health check, else 0 (always 1 in dev mode).",
    ),
    (
        "broker_hook_requests_rejected_total",
        "counter",
        "`POST /hook/set-status` requests refused, by `reason` (too_large, invalid, dnd, rate_limit_source, rate_limit_key, unavailable).",
    ),
    (
        "broker_hook_pending_dropped_total",
        "counter",
        "Hook statuses for a process not connected yet that were dropped because `HOOK_PENDING_MAX` were already waiting.",
    ),
    (
        "broker_presence_updates_rejected_total",
        "counter",
        "Presence changes refused by a bound, by `reason` (too_many_groups, name_too_long, field_too_large).",
    ),
    (
        "broker_replies_too_large_total",
        "counter",
        "Frames not queued because they exceed `OUTBOUND_QUEUE_BYTES`, by `reason` (peers_list: larger than the bound or than the space left in the requester's queue, answered with an error; system_event: not announced; audit_result, mesh_info_result, mcp_list_result: an `audit_query` page, a `mesh_info` overview or an `mcp_list` answer, answered with an error).",
    ),
    (
        "broker_ws_messages_refused_total",
        "counter",
        "Inbound WebSocket messages that closed their socket, by `reason` (too_large, too_many_fragments, invalid_utf8, protocol).",
    ),
    (
        "broker_ws_pongs_coalesced_total",
        "counter",
        "Pings answered by a pong already pending on the socket (one pending pong per socket).",
    ),
    (
        "broker_http_connections_open",
        "gauge",
        "HTTP connections open on this replica, not counting those upgraded to WebSocket.",
    ),
    (
        "broker_http_connections_closed_total",
        "counter",
        "HTTP connections closed by the broker, by `reason` (header_timeout, idle_timeout, capacity, header_too_large: a request head over `HTTP_MAX_HEADER_BYTES`, answered 431).",
    ),
    (
        "broker_http_accept_errors_total",
        "counter",
        "Failed accepts (out of file descriptors and similar); the listener backs off and retries.",
    ),
    (
        "broker_worker_restarts_total",
        "counter",
        "Background workers restarted by their supervisor after a panic or an error, by `worker`.",
    ),
    (
        "broker_workers_running",
        "gauge",
        "1 while the background worker runs, by `worker` (dispatcher, sweep, health, housekeeping, resync, scheduler, clock_authority, watcher).",
    ),
    (
        "broker_legacy_auth_hits_total",
        "counter",
        "Pre-alpha.36 clients authenticating via body.user_id fallback (remove shim when near zero)",
    ),
    (
        "broker_account_requests_rejected_total",
        "counter",
        "Account and CLI-route requests refused, by `reason` (bearer: a missing, empty, forged, expired or revoked session token; login_failed, login_locked, login_rate, device_code_rate, device_code_cap, csrf, no_session, approve_unauthorized, not_owner, not_member, too_large, unavailable).",
    ),
    (
        "broker_task_requests_refused_total",
        "counter",
        "Task requests refused, by `reason` (field_too_large, too_many_tasks, not_claimable, not_found, unavailable).",
    ),
    (
        "broker_stream_requests_refused_total",
        "counter",
        "Stream requests refused or dropped, by `reason` (name_too_long, too_many_streams, too_many_subscriptions, unavailable).",
    ),
    (
        "broker_state_requests_refused_total",
        "counter",
        "Shared-state requests refused, by `reason` (invalid, key_too_long, too_many_keys, revoked, store).",
    ),
    (
        "broker_memory_requests_refused_total",
        "counter",
        "Memory requests refused, by `reason` (invalid, content_too_large, too_many_tags, tag_too_long, too_many_memories, query_too_long, revoked, store).",
    ),
    (
        "broker_context_requests_refused_total",
        "counter",
        "Context requests refused, by `reason` (invalid, field_too_large, revoked, store).",
    ),
    (
        "broker_skill_requests_refused_total",
        "counter",
        "Skill requests refused, by `reason` (invalid, field_too_large, too_many_skills, forbidden: a replace or remove by neither the author nor an admin, revoked, store).",
    ),
    (
        "broker_vault_requests_refused_total",
        "counter",
        "Vault requests refused, by `reason` (invalid, too_large, too_many_entries, revoked, store).",
    ),
    (
        "broker_topic_requests_refused_total",
        "counter",
        "Topic requests and posts refused, by `reason` (invalid, not_found, too_many_topics: `MAX_TOPICS_PER_MESH`, topic_full: `MAX_TOPIC_MEMBERS`, not_member: a private/dm topic, revoked, key: a topic-key route's refusal, store).",
    ),
    (
        "broker_topics_created_total",
        "counter",
        "Topics created (extensions §9).",
    ),
    (
        "broker_topic_posts_total",
        "counter",
        "Topic posts stored (WebSocket `send` to `#<topicId>` and REST `POST /messages`).",
    ),
    (
        "broker_topic_notifications_total",
        "counter",
        "Mention notifications written by topic posts.",
    ),
    (
        "broker_topic_history_clamped_total",
        "counter",
        "History requests whose `limit` was over `TOPIC_HISTORY_MAX_LIMIT` and was clamped to it.",
    ),
    (
        "broker_file_requests_refused_total",
        "counter",
        "File requests refused (frames, `POST /upload`, `GET /download/…`), by `reason` (not_found, not_targeted, forbidden, invalid, too_many_keys, revoked, disabled, unauthorized, too_large, mesh_full, timeout, store, object_store: the `FILES_S3_*` object store failed or timed out).",
    ),
    (
        "broker_file_bytes_uploaded_total",
        "counter",
        "Bytes of file bodies stored by uploads through this replica.",
    ),
    (
        "broker_file_bytes_downloaded_total",
        "counter",
        "Bytes of file bodies sent by downloads through this replica.",
    ),
    (
        "broker_file_objects_swept_total",
        "counter",
        "Orphaned file objects (a crash between an object and its row, or a failed delete) deleted from the `FILES_S3_BUCKET` by the `file_objects` worker.",
    ),
    (
        "broker_webhook_requests_refused_total",
        "counter",
        "Webhook requests refused, by `reason`: over the WebSocket (invalid, exists, too_many_webhooks, forbidden, store) and inbound `POST /hook/…` calls (too_large, bad_json, unauthorized, not_object, rate_limit, store).",
    ),
    (
        "broker_webhook_deliveries_total",
        "counter",
        "Inbound webhook calls accepted and published to the mesh's live presences.",
    ),
    (
        "broker_watch_requests_refused_total",
        "counter",
        "`watch` requests refused, by `reason` (invalid, target: the SSRF rules refused the URL, too_many, store).",
    ),
    (
        "broker_watch_checks_total",
        "counter",
        "URL watch checks made by this replica, by `reason` (baseline: the first value, unchanged, changed: the value differs, notified: a `watch_triggered` was published, undelivered: the member had no live presence, failed: the fetch failed, refused: the SSRF rules refused the target, revoked: the member is banned or gone, the watch was removed unfetched).",
    ),
    (
        "broker_apikey_requests_refused_total",
        "counter",
        "`apikey_*` requests refused, by `reason` (invalid, forbidden: `admin` capability asked by a non-admin, too_many_keys, revoked, store).",
    ),
    (
        "broker_rest_requests_refused_total",
        "counter",
        "REST v1 requests refused before their route ran, by `reason` (key_missing, key_invalid, missing_capability, topic_out_of_scope, rate_limited: failed key lookups of one source over `REST_AUTH_FAILURES_PER_MIN`, too_many_streams, invalid, store).",
    ),
    (
        "broker_rest_streams_open",
        "gauge",
        "REST SSE streams (`/api/v1/topics/:name/stream`) open on this replica (bounded by `REST_MAX_STREAMS_PER_REPLICA` and `REST_MAX_STREAMS_PER_KEY`).",
    ),
    (
        "broker_relay_requests_refused_total",
        "counter",
        "Peer file/dir relay requests refused, by `reason` (invalid, not_found: no live presence has the target key, forbidden: the target's grants lack `file-read`, too_many_pending, unavailable).",
    ),
    (
        "broker_mcp_requests_refused_total",
        "counter",
        "Peer MCP registry requests refused, by `reason` (invalid, field_too_large, too_many_servers, forbidden: a replace or unregister by another member, not_found, offline, host_gone, too_many_pending, unavailable).",
    ),
    (
        "broker_peer_requests_pending",
        "gauge",
        "Relayed file/dir requests and MCP calls this replica waits on (one timer each; bounded by `MAX_PENDING_PEER_REQUESTS_PER_REPLICA`).",
    ),
    (
        "broker_peer_requests_finished_total",
        "counter",
        "Relayed file/dir requests and MCP calls resolved on this replica, by `reason` (answered: the target's answer was delivered, timed_out, target_gone: the target's socket closed or its presence ended, unmatched: an answer that matched no pending request of its sender, dropped).",
    ),
    (
        "broker_state_changes_stale_total",
        "counter",
        "`state_change` events not pushed because this replica had already pushed a newer version of the key (writers on several replicas raced; the newer value stands).",
    ),
    (
        "broker_scheduled_rejected_total",
        "counter",
        "`schedule` requests refused, by `reason` (invalid_cron, limit: `SCHEDULE_MAX_PER_MEMBER` reached, invalid: target, subtype or size, store).",
    ),
    (
        "broker_scheduled_fires_total",
        "counter",
        "Fires of scheduled messages on this replica, by `reason` (sent: through the send path; refused: the send path refused it for good, e.g. no such target, a grant, a banned member; retry: a backend was down or the member rate limited, tried again later).",
    ),
    (
        "broker_clock_ticks_total",
        "counter",
        "Simulation clock ticks this replica emitted and committed as the clock's authority.",
    ),
    (
        "broker_clocks_held",
        "gauge",
        "Simulation clocks whose authority lease this replica holds (at most `CLOCK_MAX_PER_REPLICA`).",
    ),
    (
        "broker_handshakes_in_flight",
        "gauge",
        "Handshakes holding one of the `HANDSHAKE_CONCURRENCY` slots (verifying or attaching).",
    ),
    (
        "broker_handshakes_waiting",
        "gauge",
        "Handshakes waiting, in arrival order, for a `HANDSHAKE_CONCURRENCY` slot (at most `HANDSHAKE_QUEUE_MAX`).",
    ),
    (
        "broker_handshakes_shed_total",
        "counter",
        "Handshakes told to come back later (`overloaded` with `retryAfterMs`, or a 503 with `Retry-After` before the upgrade), by `reason` (queue_full: `HANDSHAKE_QUEUE_MAX` waited already; wait: no slot within `HANDSHAKE_QUEUE_WAIT_MS`; upgrade: refused before the WebSocket upgrade).",
    ),
    (
        "broker_presence_cache_total",
        "counter",
        "Lookups of this replica's presence cache (fan-out and join/leave recipients), by `reason` (hit, miss: listed from the presence backend; invalidated: an entry dropped by a presence event of its mesh).",
    ),
    (
        "broker_otel_export_failures_total",
        "counter",
        "OTLP span exports that failed or timed out (each failure is logged, at most once a minute).",
    ),
    (
        "broker_otel_spans_dropped_total",
        "counter",
        "Finished spans that never reached the OTLP collector, by `reason` (export_failed: their export failed or timed out).",
    ),
];

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            connections_total: Counter::default(),
            connections_active: Gauge::default(),
            connections_rejected: Family::default(),
            session_keys_refused: Family::default(),
            messages_routed: Family::default(),
            messages_rejected: Family::default(),
            messages_dropped_by_grant: Family::default(),
            pushes_total: Counter::default(),
            direct_pushes: Family::default(),
            direct_leases_lost: Counter::default(),
            queue_depth: Gauge::default(),
            handshake_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            delivery_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 20)),
            slow_consumer_closes: Counter::default(),
            outbound_queue_bytes: Gauge::default(),
            presences_expired: Counter::default(),
            audit_write_failures: Counter::default(),
            audit_buffered: Gauge::default(),
            audit_buffer_full: Counter::default(),
            db_healthy: Gauge::default(),
            presences_reaped: Counter::default(),
            pubsub_healthy: Gauge::default(),
            bus_publish_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            store_batch_rows: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            store_pool_wait_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            schema_version: Gauge::default(),
            replica_heals: Family::default(),
            redis_data_losses: Counter::default(),
            replay_cache_evictions: Counter::default(),
            hook_requests_rejected: Family::default(),
            hook_pending_dropped: Counter::default(),
            presence_updates_rejected: Family::default(),
            replies_too_large: Family::default(),
            ws_messages_refused: Family::default(),
            ws_pongs_coalesced: Counter::default(),
            http_connections_open: Gauge::default(),
            http_connections_closed: Family::default(),
            http_accept_errors: Counter::default(),
            worker_restarts: Family::default(),
            workers_running: Family::default(),
            legacy_auth_hits: Counter::default(),
            account_requests_rejected: Family::default(),
            task_requests_refused: Family::default(),
            stream_requests_refused: Family::default(),
            state_requests_refused: Family::default(),
            memory_requests_refused: Family::default(),
            context_requests_refused: Family::default(),
            skill_requests_refused: Family::default(),
            vault_requests_refused: Family::default(),
            topic_requests_refused: Family::default(),
            topics_created: Counter::default(),
            topic_posts: Counter::default(),
            topic_notifications: Counter::default(),
            topic_history_clamped: Counter::default(),
            file_requests_refused: Family::default(),
            file_bytes_uploaded: Counter::default(),
            file_bytes_downloaded: Counter::default(),
            file_objects_swept: Counter::default(),
            webhook_requests_refused: Family::default(),
            webhook_deliveries: Counter::default(),
            watch_requests_refused: Family::default(),
            watch_checks: Family::default(),
            apikey_requests_refused: Family::default(),
            rest_requests_refused: Family::default(),
            rest_streams_open: Gauge::default(),
            relay_requests_refused: Family::default(),
            mcp_requests_refused: Family::default(),
            peer_requests_pending: Gauge::default(),
            peer_requests_finished: Family::default(),
            state_changes_stale: Counter::default(),
            scheduled_rejected: Family::default(),
            scheduled_fires: Family::default(),
            clock_ticks: Counter::default(),
            clocks_held: Gauge::default(),
            handshakes_in_flight: Gauge::default(),
            handshakes_waiting: Gauge::default(),
            handshakes_shed: Family::default(),
            presence_cache: Family::default(),
            registry: Registry::default(),
        };
        // prometheus-client appends `_total` to counters itself, so counters are registered
        // under their name without it.
        let help = |name: &str| {
            CATALOGUE
                .iter()
                .find(|c| c.0 == name)
                .map(|c| c.2)
                .unwrap_or("")
        };
        let sub = registry.sub_registry_with_prefix("broker");
        macro_rules! register {
            ($name:literal, $metric:expr) => {{
                let base = $name.strip_prefix("broker_").unwrap_or($name);
                let base = base.strip_suffix("_total").unwrap_or(base);
                sub.register(base, help($name), $metric.clone());
            }};
        }
        register!("broker_connections_total", m.connections_total);
        register!("broker_connections_active", m.connections_active);
        register!("broker_connections_rejected_total", m.connections_rejected);
        register!("broker_session_keys_refused_total", m.session_keys_refused);
        register!("broker_messages_routed_total", m.messages_routed);
        register!("broker_messages_rejected_total", m.messages_rejected);
        register!(
            "broker_messages_dropped_by_grant_total",
            m.messages_dropped_by_grant
        );
        register!("broker_pushes_total", m.pushes_total);
        register!("broker_direct_pushes_total", m.direct_pushes);
        register!("broker_direct_leases_lost_total", m.direct_leases_lost);
        register!("broker_queue_depth", m.queue_depth);
        register!("broker_handshake_seconds", m.handshake_seconds);
        register!("broker_delivery_seconds", m.delivery_seconds);
        register!("broker_slow_consumer_closes_total", m.slow_consumer_closes);
        register!("broker_outbound_queue_bytes", m.outbound_queue_bytes);
        register!("broker_presences_expired_total", m.presences_expired);
        register!("broker_audit_write_failures_total", m.audit_write_failures);
        register!("broker_audit_buffered", m.audit_buffered);
        register!("broker_audit_buffer_full_total", m.audit_buffer_full);
        register!("broker_db_healthy", m.db_healthy);
        register!("broker_presences_reaped_total", m.presences_reaped);
        register!("broker_pubsub_healthy", m.pubsub_healthy);
        register!("broker_bus_publish_seconds", m.bus_publish_seconds);
        register!("broker_store_batch_rows", m.store_batch_rows);
        register!("broker_store_pool_wait_seconds", m.store_pool_wait_seconds);
        register!("broker_schema_version", m.schema_version);
        register!("broker_replica_heals_total", m.replica_heals);
        register!("broker_redis_data_losses_total", m.redis_data_losses);
        register!(
            "broker_replay_cache_evictions_total",
            m.replay_cache_evictions
        );
        register!(
            "broker_hook_requests_rejected_total",
            m.hook_requests_rejected
        );
        register!("broker_hook_pending_dropped_total", m.hook_pending_dropped);
        register!(
            "broker_presence_updates_rejected_total",
            m.presence_updates_rejected
        );
        register!("broker_replies_too_large_total", m.replies_too_large);
        register!("broker_ws_messages_refused_total", m.ws_messages_refused);
        register!("broker_ws_pongs_coalesced_total", m.ws_pongs_coalesced);
        register!("broker_http_connections_open", m.http_connections_open);
        register!(
            "broker_http_connections_closed_total",
            m.http_connections_closed
        );
        register!("broker_http_accept_errors_total", m.http_accept_errors);
        register!("broker_worker_restarts_total", m.worker_restarts);
        register!("broker_workers_running", m.workers_running);
        register!("broker_legacy_auth_hits_total", m.legacy_auth_hits);
        register!(
            "broker_account_requests_rejected_total",
            m.account_requests_rejected
        );
        register!(
            "broker_task_requests_refused_total",
            m.task_requests_refused
        );
        register!(
            "broker_stream_requests_refused_total",
            m.stream_requests_refused
        );
        register!(
            "broker_state_requests_refused_total",
            m.state_requests_refused
        );
        register!(
            "broker_memory_requests_refused_total",
            m.memory_requests_refused
        );
        register!(
            "broker_context_requests_refused_total",
            m.context_requests_refused
        );
        register!(
            "broker_skill_requests_refused_total",
            m.skill_requests_refused
        );
        register!(
            "broker_vault_requests_refused_total",
            m.vault_requests_refused
        );
        register!(
            "broker_topic_requests_refused_total",
            m.topic_requests_refused
        );
        register!("broker_topics_created_total", m.topics_created);
        register!("broker_topic_posts_total", m.topic_posts);
        register!("broker_topic_notifications_total", m.topic_notifications);
        register!(
            "broker_topic_history_clamped_total",
            m.topic_history_clamped
        );
        register!(
            "broker_file_requests_refused_total",
            m.file_requests_refused
        );
        register!("broker_file_bytes_uploaded_total", m.file_bytes_uploaded);
        register!(
            "broker_file_bytes_downloaded_total",
            m.file_bytes_downloaded
        );
        register!("broker_file_objects_swept_total", m.file_objects_swept);
        register!(
            "broker_webhook_requests_refused_total",
            m.webhook_requests_refused
        );
        register!("broker_webhook_deliveries_total", m.webhook_deliveries);
        register!(
            "broker_watch_requests_refused_total",
            m.watch_requests_refused
        );
        register!("broker_watch_checks_total", m.watch_checks);
        register!(
            "broker_apikey_requests_refused_total",
            m.apikey_requests_refused
        );
        register!(
            "broker_rest_requests_refused_total",
            m.rest_requests_refused
        );
        register!("broker_rest_streams_open", m.rest_streams_open);
        register!(
            "broker_relay_requests_refused_total",
            m.relay_requests_refused
        );
        register!("broker_mcp_requests_refused_total", m.mcp_requests_refused);
        register!("broker_peer_requests_pending", m.peer_requests_pending);
        register!(
            "broker_peer_requests_finished_total",
            m.peer_requests_finished
        );
        register!("broker_state_changes_stale_total", m.state_changes_stale);
        register!("broker_scheduled_rejected_total", m.scheduled_rejected);
        register!("broker_scheduled_fires_total", m.scheduled_fires);
        register!("broker_clock_ticks_total", m.clock_ticks);
        register!("broker_clocks_held", m.clocks_held);
        register!("broker_handshakes_in_flight", m.handshakes_in_flight);
        register!("broker_handshakes_waiting", m.handshakes_waiting);
        register!("broker_handshakes_shed_total", m.handshakes_shed);
        register!("broker_presence_cache_total", m.presence_cache);
        // Process-wide, like the exporter they count (see `telemetry::EXPORT_STATS`).
        register!(
            "broker_otel_export_failures_total",
            crate::telemetry::EXPORT_STATS.export_failures
        );
        register!(
            "broker_otel_spans_dropped_total",
            crate::telemetry::EXPORT_STATS.spans_dropped
        );
        m.init_labels();
        m.pubsub_healthy.set(1);
        m.db_healthy.set(1);
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn reject_connection(&self, reason: &'static str) {
        self.connections_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A `hello` announcing another member's key (`reason`: which kind of key it was).
    pub fn refuse_session_key(&self, reason: &'static str) {
        self.session_keys_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn reject_message(&self, reason: &'static str) {
        self.messages_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// One direct message pushed, by `path` (see `labels::DIRECT_PUSH_PATHS`).
    pub fn direct_push(&self, path: &'static str) {
        self.direct_pushes.get_or_create(&PathLabel { path }).inc();
    }

    pub fn drop_by_grant(&self, cap: &'static str) {
        self.messages_dropped_by_grant
            .get_or_create(&CapLabel { cap })
            .inc();
    }

    pub fn routed(&self, priority: crate::protocol::Priority) {
        self.messages_routed
            .get_or_create(&PriorityLabel {
                priority: priority.as_str(),
            })
            .inc();
    }
}

/// Counters of the transport bounds (WebSocket framing, HTTP connections).
impl Metrics {
    /// An inbound WebSocket message refused (its socket closes), by reason.
    pub fn refuse_ws_message(&self, reason: &'static str) {
        self.ws_messages_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// An HTTP connection the broker closed (timeout, capacity), by reason.
    pub fn close_http_connection(&self, reason: &'static str) {
        self.http_connections_closed
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// Counters of the hook and presence bounds.
impl Metrics {
    pub fn reject_hook(&self, reason: &'static str) {
        self.hook_requests_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn reject_presence_update(&self, reason: &'static str) {
        self.presence_updates_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn reply_too_large(&self, reason: &'static str) {
        self.replies_too_large
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A shared-state request refused (`reason`: `StateError::metric_label`).
    pub fn refuse_state(&self, reason: &'static str) {
        self.state_requests_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A memory request refused (`reason`: `MemoryError::metric_label`).
    pub fn refuse_memory(&self, reason: &'static str) {
        self.memory_requests_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A context request refused (`reason`: `ContextError::metric_label`).
    pub fn refuse_context(&self, reason: &'static str) {
        self.context_requests_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A skill request refused (`reason`: `SkillError::metric_label`).
    pub fn refuse_skill(&self, reason: &'static str) {
        self.skill_requests_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A vault request refused (`reason`: `VaultError::metric_label`).
    pub fn refuse_vault(&self, reason: &'static str) {
        self.vault_requests_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A topic request or post refused (`reason`: `TopicError::metric_label`).
    pub fn refuse_topic(&self, reason: &'static str) {
        self.topic_requests_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A topic created.
    pub fn topic_created(&self) {
        self.topics_created.inc();
    }

    /// A topic post stored with `notifications` mention notifications.
    pub fn topic_posted(&self, notifications: usize) {
        self.topic_posts.inc();
        self.topic_notifications.inc_by(notifications as u64);
    }

    /// A history `limit` clamped to `TOPIC_HISTORY_MAX_LIMIT`.
    pub fn clamp_topic_history(&self) {
        self.topic_history_clamped.inc();
    }

    /// A file request refused (`reason`: `FileError::metric_label` or an HTTP refusal).
    pub fn refuse_file(&self, reason: &'static str) {
        self.file_requests_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A webhook request refused (`reason`: `WebhookError::metric_label` or an HTTP refusal).
    pub fn refuse_webhook(&self, reason: &'static str) {
        self.webhook_requests_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A `watch` request refused (`reason`: `WatchError::metric_label`).
    pub fn refuse_watch(&self, reason: &'static str) {
        self.watch_requests_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A URL watch check and what came of it (`labels::WATCH_CHECKS`).
    pub fn watch_checked(&self, reason: &'static str) {
        self.watch_checks
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// An `apikey_*` request refused (`reason`: `ApiKeyError::metric_label`).
    pub fn refuse_apikey(&self, reason: &'static str) {
        self.apikey_requests_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A REST v1 request refused before its route ran (`reason`: `rest::Refusal`).
    pub fn refuse_rest(&self, reason: &'static str) {
        self.rest_requests_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// The known label values of each labelled counter. [`Metrics::new`] creates every one at 0,
/// so a dashboard panel or a `rate()` alert shows 0 before the first event instead of "No
/// data" (and `rate()` does not miss the first event after a restart).
pub mod labels {
    /// `broker_scheduled_rejected_total` (`service::schedule::ScheduleError::metric_label`).
    pub const SCHEDULE_REJECTIONS: &[&str] = &["invalid_cron", "limit", "invalid", "store"];
    /// `broker_scheduled_fires_total`.
    pub const SCHEDULE_FIRES: &[&str] = &["sent", "refused", "retry"];
    /// `broker_session_keys_refused_total`.
    pub const SESSION_KEY_REFUSALS: &[&str] =
        &["member_key", "proven_session_key", "live_routing_key"];
    /// `broker_messages_routed_total` (`service::send`'s priorities).
    pub const PRIORITIES: &[&str] = &["now", "next", "low"];
    /// `broker_messages_rejected_total` (`SendError::metric_label`).
    pub const MESSAGE_REJECTIONS: &[&str] = &[
        "revoked",
        "rate_limit",
        "too_large",
        "invalid",
        "no_target",
        "grant",
        "outcome_unknown",
        "store",
    ];
    /// `broker_messages_dropped_by_grant_total`.
    pub const GRANT_CAPS: &[&str] = &["dm", "broadcast"];
    /// `broker_direct_pushes_total`.
    pub const DIRECT_PUSH_PATHS: &[&str] = &["doorbell", "claim"];
    /// `broker_replica_heals_total`.
    pub const HEALS: &[&str] = &["clock_gap", "reaped"];
    /// `broker_hook_requests_rejected_total`.
    pub const HOOK_REJECTIONS: &[&str] = &[
        "too_large",
        "invalid",
        "dnd",
        "rate_limit_source",
        "rate_limit_key",
        "unavailable",
    ];
    /// `broker_presence_updates_rejected_total`.
    pub const PRESENCE_REJECTIONS: &[&str] =
        &["too_many_groups", "name_too_long", "field_too_large"];
    /// `broker_replies_too_large_total`.
    pub const REPLIES_TOO_LARGE: &[&str] = &[
        "peers_list",
        "system_event",
        "state_list",
        "memory_results",
        "memory_recall_result",
        "audit_result",
        "context_results",
        "context_list",
        "skill_data",
        "skill_list",
        "vault_get_result",
        "vault_list_result",
        "topic_list_response",
        "topic_members_response",
        "topic_history_response",
        "file_list",
        "file_status_result",
        "mesh_info_result",
        "mcp_list_result",
    ];
    /// `broker_ws_messages_refused_total`.
    pub const WS_REFUSALS: &[&str] = &[
        "too_large",
        "too_many_fragments",
        "invalid_utf8",
        "protocol",
    ];
    /// `broker_http_connections_closed_total`.
    pub const HTTP_CLOSES: &[&str] = &[
        "header_timeout",
        "idle_timeout",
        "capacity",
        "header_too_large",
    ];
    /// `broker_worker_restarts_total` (every worker name of `lib.rs`).
    pub const WORKERS: &[&str] = &[
        "dispatcher",
        "sweep",
        "health",
        "housekeeping",
        "resync",
        "scheduler",
        "clock_authority",
        "watcher",
        "file_objects",
    ];
    /// `broker_task_requests_refused_total`.
    pub const TASK_REFUSALS: &[&str] = &[
        "field_too_large",
        "too_many_tasks",
        "not_claimable",
        "not_found",
        "unavailable",
    ];
    /// `broker_state_requests_refused_total` (`StateError::metric_label`).
    pub const STATE_REFUSALS: &[&str] = &[
        "invalid",
        "key_too_long",
        "too_many_keys",
        "revoked",
        "store",
    ];
    /// `broker_memory_requests_refused_total` (`MemoryError::metric_label`).
    pub const MEMORY_REFUSALS: &[&str] = &[
        "invalid",
        "content_too_large",
        "too_many_tags",
        "tag_too_long",
        "too_many_memories",
        "query_too_long",
        "revoked",
        "store",
    ];
    /// `broker_context_requests_refused_total` (`ContextError::metric_label`).
    pub const CONTEXT_REFUSALS: &[&str] = &["invalid", "field_too_large", "revoked", "store"];
    /// `broker_skill_requests_refused_total` (`SkillError::metric_label`).
    pub const SKILL_REFUSALS: &[&str] = &[
        "invalid",
        "field_too_large",
        "too_many_skills",
        "forbidden",
        "revoked",
        "store",
    ];
    /// `broker_vault_requests_refused_total` (`VaultError::metric_label`).
    pub const VAULT_REFUSALS: &[&str] = &[
        "invalid",
        "too_large",
        "too_many_entries",
        "revoked",
        "store",
    ];
    /// `broker_topic_requests_refused_total` (`TopicError::metric_label`).
    pub const TOPIC_REFUSALS: &[&str] = &[
        "invalid",
        "not_found",
        "too_many_topics",
        "topic_full",
        "not_member",
        "revoked",
        "key",
        "store",
    ];
    /// `broker_file_requests_refused_total` (`FileError::metric_label` and the HTTP
    /// routes' refusals).
    pub const FILE_REFUSALS: &[&str] = &[
        "not_found",
        "not_targeted",
        "forbidden",
        "invalid",
        "too_many_keys",
        "revoked",
        "disabled",
        "unauthorized",
        "too_large",
        "mesh_full",
        "timeout",
        "store",
        "object_store",
    ];
    /// `broker_webhook_requests_refused_total` (`WebhookError::metric_label` and the
    /// inbound route's refusals).
    pub const WEBHOOK_REFUSALS: &[&str] = &[
        "invalid",
        "exists",
        "too_many_webhooks",
        "forbidden",
        "too_large",
        "bad_json",
        "unauthorized",
        "not_object",
        "rate_limit",
        "store",
    ];
    /// `broker_watch_requests_refused_total` (`WatchError::metric_label`).
    pub const WATCH_REFUSALS: &[&str] = &["invalid", "target", "too_many", "store"];
    /// `broker_watch_checks_total`.
    pub const WATCH_CHECKS: &[&str] = &[
        "baseline",
        "unchanged",
        "changed",
        "notified",
        "undelivered",
        "failed",
        "refused",
        "revoked",
    ];
    /// `broker_apikey_requests_refused_total` (`ApiKeyError::metric_label`).
    pub const APIKEY_REFUSALS: &[&str] =
        &["invalid", "forbidden", "too_many_keys", "revoked", "store"];
    /// `broker_rest_requests_refused_total`.
    pub const REST_REFUSALS: &[&str] = &[
        "key_missing",
        "key_invalid",
        "missing_capability",
        "topic_out_of_scope",
        "rate_limited",
        "too_many_streams",
        "invalid",
        "store",
    ];
    /// `broker_stream_requests_refused_total`.
    pub const STREAM_REFUSALS: &[&str] = &[
        "name_too_long",
        "too_many_streams",
        "too_many_subscriptions",
        "unavailable",
    ];

    /// `broker_relay_requests_refused_total` (`RelayError::metric_label`).
    pub const RELAY_REFUSALS: &[&str] = &[
        "invalid",
        "not_found",
        "forbidden",
        "too_many_pending",
        "unavailable",
    ];
    /// `broker_mcp_requests_refused_total` (`McpError::metric_label`).
    pub const MCP_REFUSALS: &[&str] = &[
        "invalid",
        "field_too_large",
        "too_many_servers",
        "forbidden",
        "not_found",
        "offline",
        "host_gone",
        "too_many_pending",
        "unavailable",
    ];
    /// `broker_peer_requests_finished_total`.
    pub const PEER_REQUEST_OUTCOMES: &[&str] = &[
        "answered",
        "timed_out",
        "target_gone",
        "unmatched",
        "dropped",
    ];

    /// `broker_account_requests_rejected_total`.
    pub const ACCOUNT_REJECTIONS: &[&str] = &[
        "bearer",
        "login_failed",
        "login_locked",
        "login_rate",
        "device_code_rate",
        "device_code_cap",
        "csrf",
        "no_session",
        "approve_unauthorized",
        "not_owner",
        "not_member",
        "too_large",
        "unavailable",
    ];

    /// `broker_connections_rejected_total`: every error code that can end a handshake
    /// (those with a closing case in `protocol::codes::ERRORS`).
    pub fn handshake_rejections() -> impl Iterator<Item = &'static str> {
        crate::protocol::codes::ERRORS
            .iter()
            .filter(|e| {
                e.cases
                    .iter()
                    .any(|c| matches!(c.socket, crate::protocol::codes::Socket::Closed(_)))
            })
            .map(|e| e.code)
    }
}

impl Metrics {
    /// Creates every known label value of the labelled counters at 0 (see [`labels`]).
    fn init_labels(&self) {
        let reasons = |family: &Family<ReasonLabel, Counter>, values: &[&'static str]| {
            for &reason in values {
                let _ = family.get_or_create(&ReasonLabel { reason });
            }
        };
        for reason in labels::handshake_rejections() {
            let _ = self
                .connections_rejected
                .get_or_create(&ReasonLabel { reason });
        }
        reasons(&self.session_keys_refused, labels::SESSION_KEY_REFUSALS);
        for &priority in labels::PRIORITIES {
            let _ = self
                .messages_routed
                .get_or_create(&PriorityLabel { priority });
        }
        reasons(&self.messages_rejected, labels::MESSAGE_REJECTIONS);
        for &cap in labels::GRANT_CAPS {
            let _ = self
                .messages_dropped_by_grant
                .get_or_create(&CapLabel { cap });
        }
        reasons(&self.replica_heals, labels::HEALS);
        for &path in labels::DIRECT_PUSH_PATHS {
            let _ = self.direct_pushes.get_or_create(&PathLabel { path });
        }
        reasons(&self.hook_requests_rejected, labels::HOOK_REJECTIONS);
        reasons(&self.presence_updates_rejected, labels::PRESENCE_REJECTIONS);
        reasons(&self.replies_too_large, labels::REPLIES_TOO_LARGE);
        reasons(&self.ws_messages_refused, labels::WS_REFUSALS);
        reasons(&self.handshakes_shed, &["queue_full", "wait", "upgrade"]);
        reasons(&self.presence_cache, &["hit", "miss", "invalidated"]);
        reasons(&self.http_connections_closed, labels::HTTP_CLOSES);
        for &worker in labels::WORKERS {
            let _ = self.worker_restarts.get_or_create(&WorkerLabel { worker });
        }
        reasons(&self.task_requests_refused, labels::TASK_REFUSALS);
        reasons(&self.stream_requests_refused, labels::STREAM_REFUSALS);
        reasons(&self.state_requests_refused, labels::STATE_REFUSALS);
        reasons(&self.memory_requests_refused, labels::MEMORY_REFUSALS);
        reasons(&self.context_requests_refused, labels::CONTEXT_REFUSALS);
        reasons(&self.skill_requests_refused, labels::SKILL_REFUSALS);
        reasons(&self.vault_requests_refused, labels::VAULT_REFUSALS);
        reasons(&self.topic_requests_refused, labels::TOPIC_REFUSALS);
        reasons(&self.file_requests_refused, labels::FILE_REFUSALS);
        reasons(&self.webhook_requests_refused, labels::WEBHOOK_REFUSALS);
        reasons(&self.watch_requests_refused, labels::WATCH_REFUSALS);
        reasons(&self.watch_checks, labels::WATCH_CHECKS);
        reasons(&self.apikey_requests_refused, labels::APIKEY_REFUSALS);
        reasons(&self.rest_requests_refused, labels::REST_REFUSALS);
        reasons(&self.relay_requests_refused, labels::RELAY_REFUSALS);
        reasons(&self.mcp_requests_refused, labels::MCP_REFUSALS);
        reasons(&self.peer_requests_finished, labels::PEER_REQUEST_OUTCOMES);
        reasons(&self.scheduled_rejected, labels::SCHEDULE_REJECTIONS);
        reasons(&self.scheduled_fires, labels::SCHEDULE_FIRES);
        reasons(&self.account_requests_rejected, labels::ACCOUNT_REJECTIONS);
        reasons(
            &crate::telemetry::EXPORT_STATS.spans_dropped,
            crate::telemetry::SPANS_DROPPED_REASONS,
        );
    }
}

/// Counters of scheduled messages (extensions §5).
impl Metrics {
    pub fn reject_scheduled(&self, reason: &'static str) {
        self.scheduled_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn fire_scheduled(&self, reason: &'static str) {
        self.scheduled_fires
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// Counters of the account routes.
impl Metrics {
    pub fn reject_account(&self, reason: &'static str) {
        let _ = self
            .account_requests_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Renders `docs/metrics.md` from [`CATALOGUE`].
pub fn metrics_markdown() -> String {
    let mut out = String::from(
        "# Metrics\n\nGenerated from `broker/src/metrics.rs` by `cargo test -p broker --lib metrics`; do not edit by hand.\n\
         Scrape `GET /metrics` on every replica (Prometheus text format).\n\n| metric | type | meaning |\n|---|---|---|\n",
    );
    for (name, kind, help) in CATALOGUE {
        out.push_str(&format!("| `{name}` | {kind} | {help} |\n"));
    }
    out
}

/// Counters of the peer relay and the peer MCP registry (extensions §13, §14).
impl Metrics {
    /// A relay request refused (`reason`: `RelayError::metric_label`).
    pub fn refuse_relay(&self, reason: &'static str) {
        self.relay_requests_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// An MCP registry request refused (`reason`: `McpError::metric_label`).
    pub fn refuse_mcp(&self, reason: &'static str) {
        self.mcp_requests_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A pending peer request resolved (`labels::PEER_REQUEST_OUTCOMES`).
    pub fn peer_request_finished(&self, reason: &'static str) {
        self.peer_requests_finished
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalogued_metric_is_exported() {
        let m = Metrics::new();
        m.reject_connection("capacity");
        m.refuse_session_key("proven_session_key");
        m.reject_message("rate_limit");
        m.drop_by_grant("dm");
        m.routed(crate::protocol::Priority::Now);
        m.reject_hook("invalid");
        m.reject_presence_update("too_many_groups");
        m.reply_too_large("peers_list");
        m.refuse_ws_message("invalid_utf8");
        m.close_http_connection("header_timeout");
        m.reject_account("bearer");
        m.task_requests_refused
            .get_or_create(&ReasonLabel {
                reason: "not_claimable",
            })
            .inc();
        m.stream_requests_refused
            .get_or_create(&ReasonLabel {
                reason: "name_too_long",
            })
            .inc();
        m.replica_heals
            .get_or_create(&ReasonLabel { reason: "reaped" })
            .inc();
        m.worker_restarts
            .get_or_create(&WorkerLabel { worker: "sweep" })
            .inc();
        m.workers_running
            .get_or_create(&WorkerLabel { worker: "sweep" })
            .set(1);
        let text = m.render();
        for (name, kind, _) in CATALOGUE {
            let probe = if *kind == "histogram" {
                format!("{name}_bucket")
            } else {
                name.to_string()
            };
            assert!(text.contains(&probe), "{name} missing from:\n{text}");
        }
        assert!(
            text.contains(r#"broker_connections_rejected_total{reason="capacity"} 1"#),
            "{text}"
        );
    }

    /// Every catalogued counter has series before its first event: those with a label
    /// show each known value at 0, so a new labelled counter must list its values in
    /// [`labels`] and [`Metrics::init_labels`].
    #[test]
    fn labelled_counters_exist_at_zero_before_their_first_event() {
        let text = Metrics::new().render();
        for (name, kind, _) in CATALOGUE.iter().filter(|c| c.1 == "counter") {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} ({kind}) has no series before its first event: list its label values in metrics::labels and init_labels\n{text}"
            );
        }
        for want in [
            r#"broker_connections_rejected_total{reason="capacity"} 0"#,
            r#"broker_connections_rejected_total{reason="hello_timeout"} 0"#,
            r#"broker_messages_rejected_total{reason="rate_limit"} 0"#,
            r#"broker_messages_dropped_by_grant_total{cap="dm"} 0"#,
            r#"broker_messages_routed_total{priority="low"} 0"#,
            r#"broker_worker_restarts_total{worker="sweep"} 0"#,
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }

    #[test]
    fn every_exported_metric_is_catalogued() {
        let text = Metrics::new().render();
        for line in text.lines().filter_map(|l| l.strip_prefix("# HELP ")) {
            let name = line.split_whitespace().next().unwrap_or_default();
            assert!(
                CATALOGUE
                    .iter()
                    .any(|(n, _, _)| *n == name || n.strip_suffix("_total") == Some(name)),
                "{name} is exported but not in CATALOGUE"
            );
        }
    }

    #[test]
    fn metrics_doc_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        let want = metrics_markdown();
        let have = std::fs::read_to_string(path).unwrap_or_default();
        if have != want {
            if std::env::var_os("UPDATE_DOCS").is_some() {
                std::fs::write(path, &want).expect("write docs/metrics.md");
            } else {
                panic!(
                    "docs/metrics.md is stale: run `UPDATE_DOCS=1 cargo test -p broker --lib metrics`"
                );
            }
        }
    }
}
