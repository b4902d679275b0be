-- Token bucket as GCRA in integer form. Mirrors exact.go.
-- A token is W units; the bucket (limit*W units) drains `limit` units per ms.
-- KEYS[1]  hash {l = units in use, t = newest admitted ms}
-- ARGV     now_ms, window_ms, limit, n, use_server_time ("1" or "0")
-- Returns  {allowed (0|1), remaining, retry_after_ms, reset_after_ms}
local function fdiv(x, y)
  local q = math.floor(x / y)
  if q * y > x then q = q - 1 elseif (q + 1) * y <= x then q = q + 1 end
  return q
end
local function int(x) return string.format('%.0f', x) end -- exact decimal, never 1e+15
local function cdiv(x, y)
  if x <= 0 then return 0 end
  return fdiv(x + y - 1, y)
end

local now = tonumber(ARGV[1])
local w = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
if ARGV[5] == '1' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + fdiv(tonumber(t[2]), 1000)
end
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

local shift = now - req
if allowed == 0 then retry = retry + shift end
return {allowed, fdiv(limit * w - level, w), retry, cdiv(level, limit) + shift}
