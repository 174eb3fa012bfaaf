-- Files (extensions §19.1): uploads over HTTP, stored in PostgreSQL in bounded chunks.

-- One row per upload. `complete` is false while the body is being streamed in (such a row
-- is invisible; one older than twice `FILE_UPLOAD_TIMEOUT_MS` is an upload whose replica
-- died and is aborted by the next upload of its mesh). `deleted_at` set: soft-deleted
-- (hidden, chunks dropped). `stored_bytes`: the bytes of its chunks counted in
-- `file_usage`, released when they are dropped.
CREATE TABLE file (
    id                  text PRIMARY KEY,
    mesh_id             text NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    uploader_member_id  text NOT NULL,
    uploader_name       text NOT NULL,
    name                text NOT NULL,
    tags                text[] NOT NULL DEFAULT '{}',
    persistent          boolean NOT NULL DEFAULT true,
    encrypted           boolean NOT NULL DEFAULT false,
    owner_pubkey        text,
    target_spec         text,
    size                bigint NOT NULL DEFAULT 0,
    stored_bytes        bigint NOT NULL DEFAULT 0,
    complete            boolean NOT NULL DEFAULT false,
    uploaded_at         bigint NOT NULL,
    deleted_at          bigint
);

-- list_files: newest first within a mesh.
CREATE INDEX file_recent ON file (mesh_id, uploaded_at DESC);

-- The body: chunk `seq` (0, 1, …) of at most 256 KiB each.
CREATE TABLE file_chunk (
    file_id  text NOT NULL REFERENCES file (id) ON DELETE CASCADE,
    seq      integer NOT NULL,
    data     bytea NOT NULL,
    PRIMARY KEY (file_id, seq)
);

-- Per-peer sealed keys of encrypted files (`X-File-Keys`, `grant_file_access`).
CREATE TABLE file_key (
    file_id     text NOT NULL REFERENCES file (id) ON DELETE CASCADE,
    pubkey      text NOT NULL,
    sealed_key  text NOT NULL,
    PRIMARY KEY (file_id, pubkey)
);

-- The access log `file_status` reads, bounded per file (`MAX_FILE_ACCESSES`).
CREATE TABLE file_access (
    id           bigserial PRIMARY KEY,
    file_id      text NOT NULL REFERENCES file (id) ON DELETE CASCADE,
    peer_name    text NOT NULL,
    accessed_at  bigint NOT NULL
);

CREATE INDEX file_access_recent ON file_access (file_id, accessed_at DESC, id DESC);

-- Stored bytes per mesh, updated with every chunk (the per-mesh bound
-- `MAX_MESH_FILE_BYTES`, exact across replicas: the row is locked by each update).
CREATE TABLE file_usage (
    mesh_id  text PRIMARY KEY REFERENCES meshes (id) ON DELETE CASCADE,
    bytes    bigint NOT NULL DEFAULT 0
);
