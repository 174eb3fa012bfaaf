-- Scheduled messages and reminders (extensions §5) and simulation clocks (extensions §6).

-- One scheduled message. The pollers of every replica claim due rows with
-- FOR UPDATE SKIP LOCKED and, in the same transaction, mark a one-shot fired or advance a
-- cron (`deliver_at`, `fired_count`); `attempt_at` postpones a fire that could not be made
-- (a backend down, the sender rate limited) without changing `deliver_at`.
CREATE TABLE scheduled_message (
    id           text PRIMARY KEY,
    mesh_id      text NOT NULL,
    presence_id  text NOT NULL,
    member_id    text NOT NULL,
    "to"         text NOT NULL,
    message      text NOT NULL,
    deliver_at   bigint NOT NULL,
    attempt_at   bigint NOT NULL,
    cron         text,
    subtype      text,
    fired_count  bigint NOT NULL DEFAULT 0,
    cancelled    boolean NOT NULL DEFAULT false,
    fired_at     bigint,
    created_at   bigint NOT NULL
);

-- The pollers: active rows by due time.
CREATE INDEX scheduled_message_due ON scheduled_message (attempt_at)
    WHERE NOT cancelled AND fired_at IS NULL;
-- list_scheduled and the per-member limit.
CREATE INDEX scheduled_message_member ON scheduled_message (mesh_id, member_id, created_at)
    WHERE NOT cancelled AND fired_at IS NULL;

-- The subtype of a queued direct message (a reminder's `subtype:"reminder"`), carried on
-- its push.
ALTER TABLE message_queue ADD COLUMN subtype text;

-- One simulation clock per mesh, with its authority lease: `authority` is the instance id
-- of the replica that runs its timer until `lease_until` (epoch ms). Each tick is a
-- compare-and-set on `tick` under a live lease.
CREATE TABLE clock (
    mesh_id       text PRIMARY KEY,
    speed         double precision NOT NULL,
    paused        boolean NOT NULL DEFAULT false,
    tick          bigint NOT NULL DEFAULT 0,
    sim_time      bigint NOT NULL,
    started_at    bigint NOT NULL,
    last_tick_at  bigint NOT NULL,
    authority     text,
    lease_until   bigint NOT NULL DEFAULT 0
);

CREATE INDEX clock_running ON clock (lease_until) WHERE NOT paused;
