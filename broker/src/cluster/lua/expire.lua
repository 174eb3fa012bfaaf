-- Remove a record whose grace ended; returns {record, owner} or nil.
-- KEYS: presence hash, owner hash, grace zset, mesh's live set, lookup index; ARGV: presence id, now (ms), "mesh|presence"
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if not owner then
  redis.call('ZREM', KEYS[3], ARGV[3])
  return false
end
local grace = tonumber(string.match(owner, '|(%d+)$'))
if grace and grace > 0 and grace <= tonumber(ARGV[2]) then
  local record = redis.call('HGET', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('SREM', KEYS[4], ARGV[1])
  idx_del(KEYS[5], record, ARGV[1])
  return {record or false, owner}
end
return false
