-- Remember which member proved a session key; never shortens the same member's memory.
-- KEYS: the proven-key string; ARGV: member id, ttl (ms). Returns 1 when (re)written.
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('PTTL', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
