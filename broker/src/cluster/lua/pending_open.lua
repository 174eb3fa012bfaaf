-- Opens one pending peer request (relay or MCP call), within the requester's bound.
-- KEYS: the entry, the requester's index (zset id -> deadline), the target's index
-- ARGV: the entry (JSON), its deadline (ms), now (ms), most open per requester (0: no
--       bound), the entry's TTL (ms), its id
-- Returns 1 opened, 0 the requester has the most it may have open.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
local max = tonumber(ARGV[4]) or 0
if max > 0 and redis.call('ZCARD', KEYS[2]) >= max then
  return 0
end
local ttl = tonumber(ARGV[5])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[6])
-- The indexes live as long as their longest entry.
for i = 2, 3 do
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return 1
