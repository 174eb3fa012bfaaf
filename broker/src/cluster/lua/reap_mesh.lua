-- Redis Cluster: ends every live record of one mesh that a dead node still owns
-- (reap.lua for each record in the node's set of that mesh), and drops that set.
-- KEYS: presence hash, owner hash, live set, lookup index, the dead node's set in the mesh
-- ARGV: dead node id. Returns {record, owner, record, owner, ...}.
local out = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  local pid = string.match(m, '|([^|]*)$')
  local owner = pid and redis.call('HGET', KEYS[2], pid)
  if owner then
    local conn, grace = string.match(owner, '^(.*)|(%d+)$')
    local node = conn and string.match(conn, '^(.*)/[^/]*$')
    if node == ARGV[1] and grace == '0' then
      local record = redis.call('HGET', KEYS[1], pid)
      redis.call('HDEL', KEYS[1], pid)
      redis.call('HDEL', KEYS[2], pid)
      redis.call('SREM', KEYS[3], pid)
      idx_del(KEYS[4], record, pid)
      out[#out + 1] = record or false
      out[#out + 1] = owner
    end
  end
end
redis.call('DEL', KEYS[5])
return out
