-- Idempotent direct sends: one row per (sender member, client_message_id) written in the
-- same statement as the queued message, kept after the message is confirmed (the queue
-- row is deleted then) and swept with the queue TTL. A retried send with the same
-- client_message_id finds its original here and is answered with the original messageId.
CREATE TABLE message_dedup (
    sender_member_id   text NOT NULL,
    client_message_id  text NOT NULL,
    message_id         text NOT NULL,
    created_at         bigint NOT NULL,
    PRIMARY KEY (sender_member_id, client_message_id)
);

-- The TTL sweep.
CREATE INDEX message_dedup_age ON message_dedup (created_at);
