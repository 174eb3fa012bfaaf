-- Batched client_ack by broker message id; the member check keeps a client from
-- confirming someone else's message.
UPDATE message_queue q
SET delivered_at = $1
FROM UNNEST($2::text[], $3::text[]) AS a(id, member_id)
WHERE q.id = a.id AND q.target_member_id = a.member_id AND q.delivered_at IS NULL
RETURNING q.id
