-- Replace a live record if the connection still owns it.
-- KEYS: presence hash, owner hash, [the status hook's process index (see attach.lua)]
-- ARGV: presence id, conn id, record JSON, ["mesh|presence", the index's TTL in ms,
--       the record's connectedAt]
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] .. '|0' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  -- A live record keeps its process index alive (every ping tick updates it).
  if KEYS[3] then
    redis.call('ZADD', KEYS[3], ARGV[6], ARGV[4])
    redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -17)
    redis.call('PEXPIRE', KEYS[3], ARGV[5])
  end
  return 1
end
return 0
