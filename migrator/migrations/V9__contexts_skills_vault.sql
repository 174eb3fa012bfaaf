-- Contexts (extensions §11), skills (§12) and the vault (§16).

-- One "what I am working on" record per (mesh, member), upserted; `id` is kept across the
-- member's later shares. `member_name` is the display name at the time of the share
-- (`peerName`).
CREATE TABLE context (
    id            text PRIMARY KEY,
    mesh_id       text NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    member_id     text NOT NULL,
    member_name   text NOT NULL,
    summary       text NOT NULL,
    files_read    text[] NOT NULL DEFAULT '{}',
    key_findings  text[] NOT NULL DEFAULT '{}',
    tags          text[] NOT NULL DEFAULT '{}',
    updated_at    bigint NOT NULL,
    UNIQUE (mesh_id, member_id)
);

-- get_context / list_contexts: newest first within a mesh.
CREATE INDEX context_recent ON context (mesh_id, updated_at DESC);

-- One named skill per (mesh, name). `manifest` is the raw JSON text the author sent (kept
-- byte for byte, so not jsonb). Only its author (`author_member_id`, the member that last
-- shared it) or an admin replaces or removes it.
CREATE TABLE skill (
    mesh_id           text NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    name              text NOT NULL,
    description       text NOT NULL,
    instructions      text NOT NULL,
    tags              text[] NOT NULL DEFAULT '{}',
    manifest          text,
    author_member_id  text NOT NULL,
    author_name       text NOT NULL,
    created_at        bigint NOT NULL,
    updated_at        bigint NOT NULL,
    PRIMARY KEY (mesh_id, name)
);

-- Per-member vault entries: opaque client-encrypted blobs (base64 text) the broker cannot
-- open. Every read and write names (mesh, member).
CREATE TABLE vault_entry (
    mesh_id      text NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    member_id    text NOT NULL,
    key          text NOT NULL,
    ciphertext   text NOT NULL,
    nonce        text NOT NULL,
    sealed_key   text NOT NULL,
    entry_type   text NOT NULL CHECK (entry_type IN ('env', 'file')),
    mount_path   text,
    description  text,
    updated_at   bigint NOT NULL,
    PRIMARY KEY (mesh_id, member_id, key)
);
