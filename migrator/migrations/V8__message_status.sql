-- Delivery status (extensions §7) of the messages that are not (or no longer) in the
-- queue: a direct message is recorded here by the client_ack statement that removes its
-- queue row (undelivered direct messages are read from message_queue itself), and a
-- broadcast or group message when it is fanned out (it never enters the queue). Records
-- are swept with the queue TTL. `id` is in the "C" collation so that a prefix lookup
-- (`message_status{messageId: <8..31 chars>}`) is a range scan of the primary key.
CREATE TABLE message_status (
    mesh_id             text NOT NULL,
    id                  text COLLATE "C" NOT NULL,
    sender_member_id    text NOT NULL,
    -- Direct: the recipient member, and the session key it was addressed to (if any).
    target_member_id    text,
    target_session_key  text,
    -- Broadcast or group: the target spec as sent (`*`, `@all`, `@name`).
    target_spec         text,
    created_at          bigint NOT NULL,
    delivered_at        bigint,
    PRIMARY KEY (mesh_id, id),
    CHECK ((target_member_id IS NULL) <> (target_spec IS NULL))
);

-- The TTL sweep.
CREATE INDEX message_status_age ON message_status (created_at);
