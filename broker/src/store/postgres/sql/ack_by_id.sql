-- Batched client_ack by broker message id: a confirmed message leaves the queue. The
-- member check keeps a client from confirming someone else's message.
DELETE FROM message_queue q
USING UNNEST($1::text[], $2::text[]) AS a(id, member_id)
WHERE q.id = a.id AND q.target_member_id = a.member_id AND q.delivered_at IS NULL
RETURNING q.id
