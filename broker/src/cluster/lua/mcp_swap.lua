-- Compare-and-set one registration of the peer MCP registry (extensions §14).
-- KEYS: the mesh's registration hash
-- ARGV: server name, the expected value ('' = absent), the new value ('' = delete),
--       most registrations per mesh (0: no bound)
-- Returns 1 done, -1 the current value is not the expected one, -2 the mesh is full.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then cur = '' end
if cur ~= ARGV[2] then
  return -1
end
if ARGV[3] == '' then
  if cur ~= '' then
    redis.call('HDEL', KEYS[1], ARGV[1])
  end
  return 1
end
local max = tonumber(ARGV[4]) or 0
if cur == '' and max > 0 and redis.call('HLEN', KEYS[1]) >= max then
  return -2
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
