-- Redis Cluster: removes the records of one mesh whose grace ended (expire.lua for each,
-- at most 256), and says when the next one ends.
-- KEYS: presence hash, owner hash, the mesh's grace zset, live set, lookup index
-- ARGV: now (ms). Returns {next deadline or '', record, owner, record, owner, ...}.
local now = tonumber(ARGV[1])
local out = {''}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 256)) do
  local pid = string.match(m, '|([^|]*)$')
  local owner = pid and redis.call('HGET', KEYS[2], pid)
  local grace = owner and tonumber(string.match(owner, '|(%d+)$'))
  if grace and grace > 0 and grace <= now then
    local record = redis.call('HGET', KEYS[1], pid)
    redis.call('HDEL', KEYS[1], pid)
    redis.call('HDEL', KEYS[2], pid)
    redis.call('SREM', KEYS[4], pid)
    idx_del(KEYS[5], record, pid)
    out[#out + 1] = record or false
    out[#out + 1] = owner
  end
  if not (grace and grace > now) then
    redis.call('ZREM', KEYS[3], m)
  end
end
local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if first[2] then out[1] = first[2] end
return out
