-- Batched client_ack by client_message_id: every matching undelivered row leaves the queue.
-- Delivery status (extensions §7): the same statement records each confirmed message in
-- message_status (delivered now, by the database clock), so its status outlives its row.
WITH confirmed AS (
    DELETE FROM message_queue q
    USING UNNEST($1::text[], $2::text[]) AS a(client_message_id, member_id)
    WHERE q.client_message_id = a.client_message_id AND q.target_member_id = a.member_id
      AND q.delivered_at IS NULL
    RETURNING q.id, q.mesh_id, q.sender_member_id, q.target_member_id, q.target_session_key, q.created_at,
              q.client_message_id
), status AS (
    INSERT INTO message_status (mesh_id, id, sender_member_id, target_member_id, target_session_key,
                                created_at, delivered_at)
    SELECT mesh_id, id, sender_member_id, target_member_id, target_session_key, created_at,
           (extract(epoch FROM clock_timestamp()) * 1000)::bigint
    FROM confirmed
    ON CONFLICT (mesh_id, id) DO NOTHING
)
SELECT client_message_id FROM confirmed
