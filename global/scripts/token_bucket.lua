-- Token bucket as GCRA in integer form. Mirrors exact.go.
-- A token is W units; the bucket (limit*W units) drains `limit` units per ms.
-- KEYS[1]  hash {l = units in use, t = newest admitted ms}
-- ARGV     now_ms, window_ms, limit, n, use_server_time ("1" or "0")
-- Returns  {allowed (0|1), remaining, retry_after_ms, reset_after_ms}
-- Helpers (fdiv, int, ...): prelude.lua, which Go puts before this file.
local function cdiv(x, y)
  if x <= 0 then return 0 end
  return fdiv(x + y - 1, y)
end

local now, w, limit, n = strict_args()
local req = now

local st = redis.call('HMGET', KEYS[1], 'l', 't')
local last = tonumber(st[2]) or 0
if now < last then now = last end
local level = 0
if now - last < w then
  level = (tonumber(st[1]) or 0) - (now - last) * limit
  if level < 0 then level = 0 end
end

local allowed, retry = 0, 0
if level + n * w <= limit * w then
  allowed = 1
  level = level + n * w
  redis.call('HSET', KEYS[1], 'l', int(level), 't', int(now))
  redis.call('PEXPIRE', KEYS[1], 2 * w)
else
  retry = cdiv(level + n * w - limit * w, limit)
end

return strict_reply(req, now, allowed, fdiv(limit * w - level, w), retry, cdiv(level, limit))
