-- Redis Cluster: before a record of a mesh goes into grace, the cluster-wide hint of the
-- mesh's earliest grace deadline (expire_due's index of meshes) moves to it if it is
-- earlier, missing, or already due (being swept, so the sweep keeps it; see
-- grace_hint_after.lua). KEYS: the hint zset; ARGV: mesh id, the grace deadline, now (ms).
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
local deadline = tonumber(ARGV[2])
if not cur or tonumber(cur) <= tonumber(ARGV[3]) or deadline < tonumber(cur) then
  redis.call('ZADD', KEYS[1], deadline, ARGV[1])
end
return 1
