-- Insert a presence record or take it over (reattach); returns {old record, old owner}.
-- KEYS: presence hash, owner hash, grace zset, node set of the new owner, mesh's live set,
--       mesh's lookup index, [the status hook's process index: zset "mesh|presence" by
--       connectedAt; not with Redis Cluster, where it is another slot]
-- ARGV: presence id, record JSON, conn id, "mesh|presence", node-set key prefix, cap,
--       [the index's TTL in ms, the record's connectedAt]
-- With a cap > 0, a record that is not already live is refused (nil, nothing written)
-- while the mesh's live set holds cap ids: the capacity check and the attach are one step.
local cap = tonumber(ARGV[6]) or 0
if cap > 0 and redis.call('SISMEMBER', KEYS[5], ARGV[1]) == 0
    and redis.call('SCARD', KEYS[5]) >= cap then
  return false
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
local old_owner = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3] .. '|0')
redis.call('ZREM', KEYS[3], ARGV[4])
if old_owner then
  local old_node = string.match(old_owner, '^(.*)/[^/]*|')
  if old_node then redis.call('SREM', ARGV[5] .. old_node, ARGV[4]) end
end
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('SADD', KEYS[5], ARGV[1])
if old then idx_del(KEYS[6], old, ARGV[1]) end
idx_add(KEYS[6], ARGV[2], ARGV[1])
-- Index the record under its process (pid, cwd); the 16 newest are kept.
if KEYS[7] then
  redis.call('ZADD', KEYS[7], ARGV[8], ARGV[4])
  redis.call('ZREMRANGEBYRANK', KEYS[7], 0, -17)
  redis.call('PEXPIRE', KEYS[7], ARGV[7])
end
return {old or false, old_owner or false}
