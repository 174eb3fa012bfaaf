-- The per-mesh lookup index (prepended to the scripts that add or remove records): one
-- zset, every score 0, read by lexicographic range. A record `pid` has the entries
-- p|pid, m|<member id>|pid, k|<routing key>|pid, s|<session key>|pid (with one),
-- i|<session id>|pid (when not empty). find.lua checks `p|` against the presence hash.
local function idx_entries(json, pid)
  local e = {'p|' .. pid}
  local ok, r = pcall(cjson.decode, json)
  if not ok or type(r) ~= 'table' then return e end
  if type(r.member_id) == 'string' then e[#e + 1] = 'm|' .. r.member_id .. '|' .. pid end
  if type(r.session_pubkey) == 'string' then
    e[#e + 1] = 's|' .. r.session_pubkey .. '|' .. pid
    e[#e + 1] = 'k|' .. r.session_pubkey .. '|' .. pid
  elseif type(r.member_pubkey) == 'string' then
    e[#e + 1] = 'k|' .. r.member_pubkey .. '|' .. pid
  end
  if type(r.session_id) == 'string' and r.session_id ~= '' then
    e[#e + 1] = 'i|' .. r.session_id .. '|' .. pid
  end
  return e
end
local function idx_add(key, json, pid)
  for _, entry in ipairs(idx_entries(json, pid)) do redis.call('ZADD', key, 0, entry) end
end
local function idx_del(key, json, pid)
  if json then
    redis.call('ZREM', key, unpack(idx_entries(json, pid)))
  else
    redis.call('ZREM', key, 'p|' .. pid)
  end
end
