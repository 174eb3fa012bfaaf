-- Batched client_ack by client_message_id.
UPDATE message_queue q
SET delivered_at = $1
FROM UNNEST($2::text[], $3::text[]) AS a(client_message_id, member_id)
WHERE q.client_message_id = a.client_message_id AND q.target_member_id = a.member_id
  AND q.delivered_at IS NULL
RETURNING q.client_message_id
