-- Fixed window: a counter per aligned window [k*W, (k+1)*W). Mirrors exact.go.
-- KEYS[1]  hash {w = window index, c = count, t = newest admitted ms}
-- ARGV     now_ms, window_ms, limit, n, use_server_time ("1" or "0")
-- Returns  {allowed (0|1), remaining, retry_after_ms, reset_after_ms}
local function fdiv(x, y)
  local q = math.floor(x / y)
  if q * y > x then q = q - 1 elseif (q + 1) * y <= x then q = q + 1 end
  return q
end
local function int(x) return string.format('%.0f', x) end -- exact decimal, never 1e+15

local now = tonumber(ARGV[1])
local w = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
if ARGV[5] == '1' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + fdiv(tonumber(t[2]), 1000)
end
local req = now

local st = redis.call('HMGET', KEYS[1], 'w', 'c', 't')
local last = tonumber(st[3]) or 0
if now < last then now = last end
local idx = fdiv(now, w)
local count = 0
if tonumber(st[1]) == idx then count = tonumber(st[2]) or 0 end
local win_end = (idx + 1) * w - now

local allowed, retry = 0, 0
if count + n <= limit then
  allowed = 1
  count = count + n
  redis.call('HSET', KEYS[1], 'w', int(idx), 'c', int(count), 't', int(now))
  redis.call('PEXPIRE', KEYS[1], 2 * w)
else
  retry = win_end
end
local reset = 0
if count > 0 then reset = win_end end

local shift = now - req
if allowed == 0 then retry = retry + shift end
return {allowed, limit - count, retry, reset + shift}
