-- Instance registry: records this instance as alive and counts the live ones.
-- KEYS[1]  sorted set: member = instance id, score = last seen ms
-- ARGV     now_ms, ttl_ms, id
-- Returns  the number of instances seen within ttl_ms
-- Helpers (fdiv, int, ...): prelude.lua, which Go puts before this file.
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], int(now), ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now - ttl))
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
return redis.call('ZCARD', KEYS[1])
