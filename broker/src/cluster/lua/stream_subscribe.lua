-- Subscribe a presence to a stream, within the presence's bound; 1 added, 0 already, -1 full.
-- KEYS: the presence's stream set, the stream's subscriber set
-- ARGV: stream name, presence id, most streams per presence (0: no bound)
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  -- Already subscribed: make sure the stream side agrees (a prune may have raced).
  redis.call('SADD', KEYS[2], ARGV[2])
  return 0
end
local max = tonumber(ARGV[3]) or 0
if max > 0 and redis.call('SCARD', KEYS[1]) >= max then
  return -1
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
