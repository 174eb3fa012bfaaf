-- Batched lease of direct messages pushed without a claim (the doorbell carried them): a
-- row still undelivered whose lease ended (or that was never claimed) gets the pusher's
-- lease, as its claim would have. SKIP LOCKED: a row a concurrent claim or client_ack holds
-- is theirs (never waited for, so no deadlock with those batches).
-- $1 ids, $2 members, $3 now, $4 lease ends
UPDATE message_queue q
SET claimed_until = pick.until
FROM (SELECT m.seq, a.until FROM message_queue m
      JOIN UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS a(id, member_id, now, until)
        ON m.id = a.id AND m.target_member_id = a.member_id
      WHERE m.delivered_at IS NULL AND m.claimed_until <= a.now
      FOR UPDATE OF m SKIP LOCKED) AS pick
WHERE q.seq = pick.seq
RETURNING q.id
