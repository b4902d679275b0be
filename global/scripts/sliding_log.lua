-- Sliding log: the timestamp of every admitted request. Exact. Mirrors exact.go.
-- KEYS[1]  sorted set: member = unique sequence number, score = ms
-- KEYS[2]  hash {s = last sequence number, t = newest admitted ms}
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

local last = tonumber(redis.call('HGET', KEYS[2], 't')) or 0
if now < last then now = last end
-- The window is (now - W, now].
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - w)
local count = redis.call('ZCARD', KEYS[1])

local allowed, retry = 0, 0
if count + n <= limit then
  allowed = 1
  local seq = redis.call('HINCRBY', KEYS[2], 's', n) - n
  local args = {}
  for i = 1, n do
    args[#args + 1] = int(now)
    args[#args + 1] = int(seq + i)
    if #args >= 1000 or i == n then
      redis.call('ZADD', KEYS[1], unpack(args))
      args = {}
    end
  end
  redis.call('HSET', KEYS[2], 't', int(now))
  redis.call('PEXPIRE', KEYS[1], 2 * w)
  redis.call('PEXPIRE', KEYS[2], 2 * w)
  count = count + n
else
  -- The oldest count - (limit - n) entries must leave the window.
  local k = count - (limit - n)
  local e = redis.call('ZRANGE', KEYS[1], k - 1, k - 1, 'WITHSCORES')
  retry = tonumber(e[2]) + w - now
end
local reset = 0
if count > 0 then
  local e = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  reset = tonumber(e[2]) + w - now
end

local shift = now - req
if allowed == 0 then retry = retry + shift end
return {allowed, limit - count, retry, reset + shift}
