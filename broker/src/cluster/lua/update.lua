-- Replace a live record if the connection still owns it.
-- KEYS: presence hash, owner hash; ARGV: presence id, conn id, record JSON
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] .. '|0' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
