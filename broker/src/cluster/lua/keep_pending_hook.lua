-- A status hook's status waiting for its process to connect, shared by every replica and
-- bounded cluster-wide. KEYS: the index (sorted set of waiting keys by expiry), the entry;
-- ARGV: key, status, now (ms), ttl (ms), most entries at once.
-- Returns 1 when kept, 0 when the bound was reached (the status is dropped).
local now = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local max = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= max then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
-- The index outlives no entry it names.
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
