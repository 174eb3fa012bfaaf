-- Takes (removes and returns) one pending peer request, if it is still open and, when a
-- target is given, was sent to that presence. Exactly one caller gets an entry back.
-- KEYS: the entry
-- ARGV: the expected target presence ('' = any), the requester index prefix, the target
--       index prefix, the entry's id
local v = redis.call('GET', KEYS[1])
if not v then
  return false
end
local p = cjson.decode(v)
if ARGV[1] ~= '' and p.target_presence_id ~= ARGV[1] then
  return false
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', ARGV[2] .. p.requester_presence_id, ARGV[4])
redis.call('ZREM', ARGV[3] .. p.target_presence_id, ARGV[4])
return v
