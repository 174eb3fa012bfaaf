-- Redis Cluster: the status hook's process index entry of a record, a step of its own
-- (the index is another slot than the mesh). attach.lua and update.lua do the same inline
-- with one Redis. KEYS: the process index; ARGV: "mesh|presence", TTL (ms), connectedAt.
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -17)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
