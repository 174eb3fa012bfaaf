-- Tasks (extensions §3) and stream names (extensions §4). Stream subscriptions are live
-- state in Redis, never here.

-- One task of a mesh. A claim is one conditional UPDATE (`status = 'open'` → `claimed`),
-- so exactly one claimer wins across replicas.
CREATE TABLE task (
    -- Creation order: tasks created within one millisecond keep their order.
    seq                  bigserial UNIQUE,
    id                   text PRIMARY KEY,
    mesh_id              text NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    title                text NOT NULL,
    assignee             text,
    priority             text NOT NULL DEFAULT 'normal',
    tags                 jsonb NOT NULL DEFAULT '[]'::jsonb,
    status               text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'claimed', 'done')),
    created_by_member    text,
    created_by_presence  text,
    created_by_name      text,
    claimed_by_member    text,
    claimed_by_presence  text,
    claimed_by_name      text,
    result               text,
    created_at           bigint NOT NULL,
    claimed_at           bigint,
    completed_at         bigint
);

-- `list_tasks` (newest first) and the per-mesh bound.
CREATE INDEX task_mesh_newest ON task (mesh_id, created_at DESC, seq DESC);

-- One stream name per mesh; `create_stream` is idempotent on it.
CREATE TABLE stream (
    -- Creation order: streams created within one millisecond keep their order.
    seq         bigserial UNIQUE,
    id          text PRIMARY KEY,
    mesh_id     text NOT NULL REFERENCES meshes (id) ON DELETE CASCADE,
    name        text NOT NULL,
    created_by  text NOT NULL DEFAULT '',
    created_at  bigint NOT NULL,
    UNIQUE (mesh_id, name)
);
