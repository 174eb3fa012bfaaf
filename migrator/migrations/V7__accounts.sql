-- Accounts (issue #12, cli-routes.md): users of this broker, device-code logins, CLI
-- sessions (only the SHA-256 hash of a token is kept), web UI sessions, the `/cli-sync`
-- token ids, and what signed-in users need of meshes (a soft delete, slugs unique among
-- live meshes, lookups by owner and by member user).

CREATE TABLE users (
    id              text PRIMARY KEY,
    email           text NOT NULL,
    display_name    text NOT NULL,
    -- argon2id PHC string; NULL: no web sign-in.
    password_hash   text,
    is_admin        boolean NOT NULL DEFAULT false,
    disabled        boolean NOT NULL DEFAULT false,
    failed_logins   integer NOT NULL DEFAULT 0,
    locked_until    bigint,
    created_at      bigint NOT NULL
);
CREATE UNIQUE INDEX users_email ON users (lower(email));

-- One row per `POST /cli/device-code`. The session token is minted when a poll consumes
-- the approved code, so no token is stored here.
CREATE TABLE device_codes (
    id            text PRIMARY KEY,          -- the CLI's session_id (clm_sess_…)
    device_code   text NOT NULL UNIQUE,
    user_code     text NOT NULL UNIQUE,
    status        text NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'consumed', 'expired')),
    hostname      text,
    platform      text,
    arch          text,
    client_ip     text,
    user_id       text REFERENCES users (id) ON DELETE CASCADE,
    expires_at    bigint NOT NULL,
    created_at    bigint NOT NULL,
    approved_at   bigint
);
CREATE INDEX device_codes_expiry ON device_codes (expires_at);

CREATE TABLE cli_sessions (
    id              text PRIMARY KEY,        -- the token's jti
    user_id         text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash      text NOT NULL UNIQUE,    -- SHA-256 hex of the token
    device_code_id  text,
    hostname        text,
    platform        text,
    arch            text,
    created_at      bigint NOT NULL,
    last_seen_at    bigint,
    expires_at      bigint NOT NULL,
    revoked_at      bigint,
    -- Creation order among sessions of one millisecond ("the oldest" beyond the cap).
    seq             bigserial NOT NULL
);
CREATE INDEX cli_sessions_user ON cli_sessions (user_id, created_at);

CREATE TABLE web_sessions (
    id_hash     text PRIMARY KEY,            -- SHA-256 hex of the cookie value
    user_id     text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf        text NOT NULL,
    created_at  bigint NOT NULL,
    expires_at  bigint NOT NULL
);
CREATE INDEX web_sessions_expiry ON web_sessions (expires_at);
CREATE INDEX web_sessions_user ON web_sessions (user_id);

-- `/cli-sync` token ids, kept until the token's expiry so that a token is used once
-- cluster-wide.
CREATE TABLE sync_jtis (
    jti         text PRIMARY KEY,
    expires_at  bigint NOT NULL
);

-- Soft delete; slugs are unique among live meshes only.
ALTER TABLE meshes ADD COLUMN IF NOT EXISTS archived_at bigint;
ALTER TABLE meshes DROP CONSTRAINT IF EXISTS meshes_slug_key;
CREATE UNIQUE INDEX meshes_live_slug ON meshes (slug) WHERE archived_at IS NULL;
CREATE INDEX meshes_owner ON meshes (owner_user_id) WHERE owner_user_id IS NOT NULL;
CREATE INDEX members_user ON members (user_id) WHERE user_id IS NOT NULL;
