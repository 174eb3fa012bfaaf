-- A replica's heartbeat, and what it must know of the cluster to react to faults.
-- KEYS: nodes zset, epoch, this node's reaped tombstone, expect set, synced set, lost-at
-- ARGV: node id, now (ms), candidate epoch, stale before (ms)
-- Returns {epoch, tombstone found (0/1), was in the nodes zset (0/1), live node ids,
--          replicas the re-sync waits for, replicas re-synced, lost-at or ''}.
redis.call('SET', KEYS[2], ARGV[3], 'NX')
local epoch = redis.call('GET', KEYS[2])
local tombstone = redis.call('DEL', KEYS[3])
local listed = 0
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then listed = 1 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local alive = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[4], '+inf')
local expect = redis.call('SMEMBERS', KEYS[4])
local synced = redis.call('SMEMBERS', KEYS[5])
local lost = redis.call('GET', KEYS[6]) or ''
return {epoch, tombstone, listed, alive, expect, synced, lost}
