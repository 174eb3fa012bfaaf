-- Claims one connection's deliverable messages in queue order. SKIP LOCKED lets concurrent
-- drains of one member (several sessions, several replicas) split the rows instead of
-- waiting on each other; the lease hides a claimed row until it ends or is delivered.
-- $1 mesh, $2 member, $3 session key, $4 all priorities, $5 steal, $6 now, $7 lease end, $8 limit
UPDATE message_queue q
SET claimed_until = $7
FROM (SELECT seq FROM message_queue
      WHERE mesh_id = $1 AND target_member_id = $2 AND delivered_at IS NULL
        AND (target_session_key IS NULL OR target_session_key = $3)
        AND ($4 OR priority = 'now')
        AND ($5 OR claimed_until <= $6)
      ORDER BY seq
      LIMIT $8
      FOR UPDATE SKIP LOCKED) AS pick
WHERE q.seq = pick.seq
RETURNING q.seq, q.id, q.mesh_id, q.sender_member_id, q.sender_pubkey, q.sender_member_pubkey, q.sender_name,
          q.target_member_id, q.target_session_key, q.priority, q.nonce, q.ciphertext, q.client_message_id,
          q.created_at, q.trace_context, q.subtype
