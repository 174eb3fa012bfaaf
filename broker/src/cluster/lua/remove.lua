-- Remove a record if the connection owns it (kick, ban, replacement); {record, owner} or nil.
-- KEYS: presence hash, owner hash, grace zset, node set of the conn, mesh's live set,
--       lookup index
-- ARGV: presence id, conn id, "mesh|presence"
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if owner and string.match(owner, '^(.*)|') == ARGV[2] then
  local record = redis.call('HGET', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('SREM', KEYS[4], ARGV[3])
  redis.call('SREM', KEYS[5], ARGV[1])
  idx_del(KEYS[6], record, ARGV[1])
  return {record or false, owner}
end
return false
