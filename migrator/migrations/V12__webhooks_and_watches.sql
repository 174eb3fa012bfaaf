-- Webhooks (extensions §15) and URL watches (§17).

-- Named inbound HTTP hooks of a mesh. The secret itself is never stored: an inbound call
-- `POST /hook/<meshId>/<secret>` is looked up by (mesh, SHA-256 of the secret). A delete
-- removes the row, so the name is free again.
CREATE TABLE webhook (
    id                 text PRIMARY KEY,
    mesh_id            text NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    name               text NOT NULL,
    secret_hash        text NOT NULL,
    creator_member_id  text NOT NULL,
    created_at         bigint NOT NULL,
    UNIQUE (mesh_id, name),
    UNIQUE (mesh_id, secret_hash)
);

-- URLs polled for a member (not a presence: a watch outlives the command that made it).
-- Each check is leased to one replica (`lease_owner` until `lease_until`, taken with
-- `FOR UPDATE SKIP LOCKED`); a replica that dies mid-check leaves a lease that runs out.
CREATE TABLE url_watch (
    id             text PRIMARY KEY,
    mesh_id        text NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    member_id      text NOT NULL,
    url            text NOT NULL,
    mode           text NOT NULL CHECK (mode IN ('hash', 'json', 'status')),
    extract        text,
    interval_secs  integer NOT NULL CHECK (interval_secs > 0),
    notify_on      text NOT NULL,
    headers        text NOT NULL DEFAULT '{}',
    label          text,
    last_value     text,
    last_check     bigint,
    created_at     bigint NOT NULL,
    next_check_at  bigint NOT NULL,
    lease_owner    text,
    lease_until    bigint NOT NULL DEFAULT 0
);

CREATE INDEX url_watch_member ON url_watch (mesh_id, member_id, created_at);
CREATE INDEX url_watch_due ON url_watch (next_check_at);
