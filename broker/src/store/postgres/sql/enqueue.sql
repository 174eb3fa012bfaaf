-- Group commit: one multi-row insert for every send gathered by the writer task. The
-- ORDER BY keeps `seq` in submission order, which is each pair's send order.
INSERT INTO message_queue (id, mesh_id, sender_member_id, sender_pubkey, sender_member_pubkey, sender_name,
                           target_member_id, target_session_key, priority, nonce, ciphertext,
                           client_message_id, created_at)
SELECT id, mesh_id, sender_member_id, sender_pubkey, sender_member_pubkey, sender_name,
       target_member_id, target_session_key, priority, nonce, ciphertext, client_message_id, created_at
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::bigint[])
     WITH ORDINALITY AS m(id, mesh_id, sender_member_id, sender_pubkey, sender_member_pubkey, sender_name,
                          target_member_id, target_session_key, priority, nonce, ciphertext,
                          client_message_id, created_at, ord)
ORDER BY ord
