-- Batched client_ack by broker message id: a confirmed message leaves the queue. The
-- member check keeps a client from confirming someone else's message.
-- Delivery status (extensions §7): the same statement records the confirmed message in
-- message_status (delivered now, by the database clock), so its status outlives its row.
WITH confirmed AS (
    DELETE FROM message_queue q
    USING UNNEST($1::text[], $2::text[]) AS a(id, member_id)
    WHERE q.id = a.id AND q.target_member_id = a.member_id AND q.delivered_at IS NULL
    RETURNING q.id, q.mesh_id, q.sender_member_id, q.target_member_id, q.target_session_key, q.created_at
), status AS (
    INSERT INTO message_status (mesh_id, id, sender_member_id, target_member_id, target_session_key,
                                created_at, delivered_at)
    SELECT mesh_id, id, sender_member_id, target_member_id, target_session_key, created_at,
           (extract(epoch FROM clock_timestamp()) * 1000)::bigint
    FROM confirmed
    ON CONFLICT (mesh_id, id) DO NOTHING
)
SELECT id FROM confirmed
