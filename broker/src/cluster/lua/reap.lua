-- End a dead node's live record unless a reattach moved it elsewhere; {record, owner} or nil.
-- KEYS: presence hash, owner hash, mesh's live set, lookup index; ARGV: presence id, dead node id
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if not owner then return false end
local conn, grace = string.match(owner, '^(.*)|(%d+)$')
local node = conn and string.match(conn, '^(.*)/[^/]*$')
if node == ARGV[2] and grace == '0' then
  local record = redis.call('HGET', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[1])
  idx_del(KEYS[4], record, ARGV[1])
  return {record or false, owner}
end
return false
