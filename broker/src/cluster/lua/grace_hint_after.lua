-- Redis Cluster: after a sweep of one mesh's due graces, its hint becomes the mesh's next
-- deadline, or goes when there is none, unless a release moved it meanwhile (to a
-- deadline still ahead, which stays: grace_hint.lua runs before the record's change).
-- KEYS: the hint zset; ARGV: mesh id, next deadline ('' = none), now (ms).
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
local now = tonumber(ARGV[3])
if ARGV[2] == '' then
  if cur and tonumber(cur) <= now then redis.call('ZREM', KEYS[1], ARGV[1]) end
  return 1
end
local nxt = tonumber(ARGV[2])
if not cur or tonumber(cur) <= now or nxt < tonumber(cur) then
  redis.call('ZADD', KEYS[1], nxt, ARGV[1])
end
return 1
