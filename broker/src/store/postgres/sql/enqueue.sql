-- Group commit: one statement for every send gathered by the writer task. The ORDER BY
-- keeps `seq` in submission order, which is each pair's send order.
-- Idempotency: a send with a client_message_id claims (sender, client id) in
-- message_dedup in the same statement; only sends that claimed a new key (or carry no
-- client id) are queued. Each input row answers the messageId it is known by: its own,
-- the earlier one of this batch with the same key, or the one committed before.
-- NULL: a concurrent statement holds the key and had not committed at our snapshot.
-- trace_context: the send's W3C traceparent (V3), so its push continues the send's trace.
-- subtype: a scheduled reminder's `subtype` (V6), carried on its push.
WITH m AS (
    SELECT *
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::bigint[], $14::text[], $15::text[])
         WITH ORDINALITY AS m(id, mesh_id, sender_member_id, sender_pubkey, sender_member_pubkey, sender_name,
                              target_member_id, target_session_key, priority, nonce, ciphertext,
                              client_message_id, created_at, trace_context, subtype, ord)
), fresh AS (
    INSERT INTO message_dedup (sender_member_id, client_message_id, message_id, created_at)
    SELECT sender_member_id, client_message_id, id, created_at FROM m
    WHERE client_message_id IS NOT NULL
    ORDER BY ord
    ON CONFLICT (sender_member_id, client_message_id) DO NOTHING
    RETURNING sender_member_id, client_message_id, message_id
), queued AS (
    INSERT INTO message_queue (id, mesh_id, sender_member_id, sender_pubkey, sender_member_pubkey, sender_name,
                               target_member_id, target_session_key, priority, nonce, ciphertext,
                               client_message_id, created_at, trace_context, subtype)
    SELECT id, mesh_id, sender_member_id, sender_pubkey, sender_member_pubkey, sender_name,
           target_member_id, target_session_key, priority, nonce, ciphertext, client_message_id, created_at,
           trace_context, subtype
    FROM m
    WHERE m.client_message_id IS NULL OR m.id IN (SELECT message_id FROM fresh)
    ORDER BY ord
    RETURNING id
)
SELECT m.ord,
       coalesce((SELECT q.id FROM queued q WHERE q.id = m.id),
                (SELECT f.message_id FROM fresh f
                 WHERE f.sender_member_id = m.sender_member_id AND f.client_message_id = m.client_message_id),
                (SELECT d.message_id FROM message_dedup d
                 WHERE d.sender_member_id = m.sender_member_id AND d.client_message_id = m.client_message_id))
           AS message_id
FROM m
ORDER BY m.ord
