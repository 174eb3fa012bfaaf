-- The broker's durable state. Times are milliseconds since the Unix epoch (bigint), so
-- the audit chain can hash them exactly as they were written.

CREATE TABLE meshes (
    id              text PRIMARY KEY,
    slug            text NOT NULL UNIQUE,
    name            text NOT NULL,
    owner_user_id   text,
    -- The owner signing key's 32-byte seed (hex): the broker signs invites with it.
    owner_seed_hex  text NOT NULL,
    owner_pubkey    text NOT NULL,
    root_key        text NOT NULL,
    created_at      bigint NOT NULL
);

CREATE TABLE members (
    id              text PRIMARY KEY,
    mesh_id         text NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    pubkey          text NOT NULL,
    display_name    text NOT NULL,
    role            text NOT NULL CHECK (role IN ('admin', 'member')),
    user_id         text,
    revoked_at      bigint,
    peer_grants     jsonb NOT NULL DEFAULT '{}'::jsonb,
    default_groups  jsonb NOT NULL DEFAULT '[]'::jsonb,
    role_tag        text,
    message_mode    text,
    created_at      bigint NOT NULL,
    UNIQUE (mesh_id, pubkey)
);

CREATE TABLE invites (
    code        text PRIMARY KEY,
    token       text NOT NULL UNIQUE,
    mesh_id     text NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    role        text NOT NULL CHECK (role IN ('admin', 'member')),
    expires_at  bigint NOT NULL,  -- unix seconds, as in the invite payload
    max_uses    integer,
    uses        integer NOT NULL DEFAULT 0,
    payload     jsonb NOT NULL
);

-- Direct messages. `seq` is the commit order, which is the push order of one pair.
CREATE TABLE message_queue (
    seq                  bigserial PRIMARY KEY,
    id                   text NOT NULL UNIQUE,
    mesh_id              text NOT NULL,
    sender_member_id     text NOT NULL,
    sender_pubkey        text NOT NULL,
    sender_member_pubkey text NOT NULL,
    sender_name          text NOT NULL,
    target_member_id     text NOT NULL,
    target_session_key   text,
    priority             text NOT NULL CHECK (priority IN ('now', 'next', 'low')),
    nonce                text NOT NULL,
    ciphertext           text NOT NULL,
    client_message_id    text,
    created_at           bigint NOT NULL,
    -- End of the current claim lease; 0 when never claimed.
    claimed_until        bigint NOT NULL DEFAULT 0,
    delivered_at         bigint
);

-- The drain path: one recipient's undelivered messages in order.
CREATE INDEX message_queue_pending ON message_queue (mesh_id, target_member_id, seq)
    WHERE delivered_at IS NULL;
-- The TTL sweep and the depth gauge.
CREATE INDEX message_queue_pending_age ON message_queue (created_at)
    WHERE delivered_at IS NULL;
-- client_ack by client_message_id.
CREATE INDEX message_queue_client_id ON message_queue (target_member_id, client_message_id)
    WHERE client_message_id IS NOT NULL AND delivered_at IS NULL;

-- The tamper-evident audit chain, one per mesh (spec §7). `payload` is the canonical
-- JSON text that was hashed.
CREATE TABLE audit_log (
    mesh_id          text NOT NULL,
    seq              bigint NOT NULL,
    event_type       text NOT NULL,
    actor_member_id  text,
    payload          text NOT NULL,
    created_at       bigint NOT NULL,
    prev_hash        text NOT NULL,
    hash             text NOT NULL,
    PRIMARY KEY (mesh_id, seq)
);

-- What a member's next connection gets back (groups, summary, profile, stats).
CREATE TABLE peer_state (
    mesh_id       text NOT NULL,
    member_id     text NOT NULL,
    groups        jsonb NOT NULL DEFAULT '[]'::jsonb,
    summary       text,
    profile       jsonb NOT NULL DEFAULT '{}'::jsonb,
    stats         jsonb,
    last_seen_at  bigint NOT NULL,
    PRIMARY KEY (mesh_id, member_id)
);
