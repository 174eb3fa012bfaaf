-- API keys of the REST API (extensions §10, rest.md §2): the prefix (first 11 chars of
-- the secret) and the SHA-256 hex of the whole secret, never the secret itself.
CREATE TABLE api_key (
    id                   text PRIMARY KEY,
    mesh_id              text NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    label                text NOT NULL,
    prefix               text NOT NULL,
    secret_hash          text NOT NULL,
    capabilities         text[] NOT NULL,
    topic_scopes         text[],
    issued_by_member_id  text,
    created_at           bigint NOT NULL,
    last_used_at         bigint,
    revoked_at           bigint,
    expires_at           bigint,
    -- Creation order among keys of the same millisecond (lists are newest first).
    seq                  bigserial NOT NULL
);

CREATE INDEX api_key_by_prefix ON api_key (prefix);
CREATE INDEX api_key_by_issuer ON api_key (mesh_id, issued_by_member_id, created_at DESC);
