-- The records of one mesh matching any of several index ranges (see index.lua).
-- KEYS: presence hash, owner hash, index zset; ARGV: pairs of (min, max) lex ranges.
-- Returns a flat list {id, record, owner, ...}; the caller checks every criterion again.
-- An index that does not cover exactly the mesh's records (written by an older replica
-- during a rolling upgrade, or lost) is rebuilt first: lookups stay exact.
if redis.call('HLEN', KEYS[1]) ~= redis.call('ZLEXCOUNT', KEYS[3], '[p|', '[p|\255') then
  redis.call('DEL', KEYS[3])
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do idx_add(KEYS[3], all[i + 1], all[i]) end
end
local seen = {}
local out = {}
for i = 1, #ARGV, 2 do
  for _, entry in ipairs(redis.call('ZRANGEBYLEX', KEYS[3], ARGV[i], ARGV[i + 1])) do
    local pid = string.match(entry, '([^|]*)$')
    if pid and not seen[pid] then
      seen[pid] = true
      local record = redis.call('HGET', KEYS[1], pid)
      local owner = redis.call('HGET', KEYS[2], pid)
      if record and owner then
        out[#out + 1] = pid
        out[#out + 1] = record
        out[#out + 1] = owner
      end
    end
  end
end
return out
