-- Drop every stream subscription of a presence; returns how many it had.
-- KEYS: the presence's stream set
-- ARGV: key prefix of the streams' subscriber sets (the stream name follows it), presence id
local streams = redis.call('SMEMBERS', KEYS[1])
for _, s in ipairs(streams) do
  redis.call('SREM', ARGV[1] .. s, ARGV[2])
end
redis.call('DEL', KEYS[1])
return #streams
