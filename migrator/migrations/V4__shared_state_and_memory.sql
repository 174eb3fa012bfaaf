-- Shared state (extensions §1): one row per (mesh, key), last write wins. `version` is 1
-- for a key's first write and grows by one per write under the row's lock, so it is the
-- commit order of the key's writes; `state_change` events carry it and replicas never push
-- an older version after a newer one.
CREATE TABLE state (
    mesh_id               text NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    key                   text NOT NULL,
    value                 jsonb NOT NULL,
    updated_by_member_id  text NOT NULL,
    -- The writer member's display name at the time of the write (`updatedBy`).
    updated_by_name       text NOT NULL,
    updated_at            bigint NOT NULL,
    version               bigint NOT NULL,
    PRIMARY KEY (mesh_id, key)
);

-- Memories (extensions §2): shared notes with English full-text search. Tags are stored,
-- not searched. `forget` is a soft delete (`forgotten_at`).
CREATE TABLE memory (
    id             text PRIMARY KEY,
    mesh_id        text NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    content        text NOT NULL,
    tags           text[] NOT NULL DEFAULT '{}',
    member_id      text NOT NULL,
    -- The author member's display name when it was stored (`rememberedBy`).
    member_name    text NOT NULL,
    created_at     bigint NOT NULL,
    forgotten_at   bigint,
    search_vector  tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED
);

-- recall: the match.
CREATE INDEX memory_search ON memory USING GIN (search_vector);
-- The per-mesh bound (memories not forgotten).
CREATE INDEX memory_live ON memory (mesh_id) WHERE forgotten_at IS NULL;
