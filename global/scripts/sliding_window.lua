-- Sliding window (two-window weighted counter). Mirrors approx.go.
-- KEYS[1]  hash {w = window index, c = current count, p = previous count, t = newest admitted ms}
-- ARGV     now_ms, window_ms, limit, n, use_server_time ("1" or "0")
-- Returns  {allowed (0|1), remaining, retry_after_ms, reset_after_ms}
local function fdiv(x, y) -- floor(x / y) for integers, exact past 2^31
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

local st = redis.call('HMGET', KEYS[1], 'w', 'c', 'p', 't')
local last = tonumber(st[4]) or 0
if now < last then now = last end
local idx = fdiv(now, w)
local prev, cur = 0, 0
local sidx = tonumber(st[1])
if sidx == idx then
  cur = tonumber(st[2]) or 0
  prev = tonumber(st[3]) or 0
elseif sidx == idx - 1 then
  prev = tonumber(st[2]) or 0
end
local elapsed = now - idx * w

local function scaled(c) return prev * (w - elapsed) + c * w end

local allowed, retry = 0, 0
if scaled(cur + n) <= limit * w then
  allowed = 1
  cur = cur + n
  redis.call('HSET', KEYS[1], 'w', int(idx), 'c', int(cur), 'p', int(prev), 't', int(now))
  redis.call('PEXPIRE', KEYS[1], 2 * w)
else
  retry = -1
  local a = limit - cur - n
  if a >= 0 then
    if prev == 0 then
      retry = 0
    else
      local e = w - fdiv(a * w, prev)
      if e < elapsed then e = elapsed end
      if e < w then retry = e - elapsed end
    end
  end
  if retry < 0 then
    if cur == 0 then
      retry = w - elapsed
    else
      local e = w - fdiv((limit - n) * w, cur)
      if e < 0 then e = 0 end
      if e < w then retry = w - elapsed + e else retry = 2 * w - elapsed end
    end
  end
end

local remaining = fdiv(limit * w - scaled(cur), w)
if remaining < 0 then remaining = 0 end
local reset = 0
if cur > 0 then reset = 2 * w - elapsed elseif prev > 0 then reset = w - elapsed end

local shift = now - req
if allowed == 0 then retry = retry + shift end
return {allowed, remaining, retry, reset + shift}
