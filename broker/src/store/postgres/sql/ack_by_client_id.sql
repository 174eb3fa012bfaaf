-- Batched client_ack by client_message_id: every matching undelivered row leaves the queue.
DELETE FROM message_queue q
USING UNNEST($1::text[], $2::text[]) AS a(client_message_id, member_id)
WHERE q.client_message_id = a.client_message_id AND q.target_member_id = a.member_id
  AND q.delivered_at IS NULL
RETURNING q.client_message_id
