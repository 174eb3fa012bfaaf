-- Move a live record into grace if the connection still owns it.
-- KEYS: owner hash, grace zset, node set, mesh's live set; ARGV: presence id, conn id, grace end (ms), "mesh|presence"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] .. '|0' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
  redis.call('SREM', KEYS[3], ARGV[4])
  redis.call('SREM', KEYS[4], ARGV[1])
  return 1
end
return 0
