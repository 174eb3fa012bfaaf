-- Persistent peer-hosted MCP registrations (extensions §14, "Ours: persist persistent
-- entries"). The live registry (host presence, online state) is in Redis; this keeps the
-- registrations whose host asked for `persistent`, so that they survive a restart of every
-- replica and a Redis data loss, shown offline until their member says `hello` again.
-- `registration` is the registration as JSON text, opaque to the database.
CREATE TABLE mcp_server (
    mesh_id         text NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    server_name     text NOT NULL,
    host_member_id  text NOT NULL,
    registration    text NOT NULL,
    updated_at      bigint NOT NULL,
    PRIMARY KEY (mesh_id, server_name)
);
