-- Sliding log: the timestamp of every admitted request. Exact. Mirrors exact.go.
-- KEYS[1]  sorted set: member = unique sequence number, score = ms
-- KEYS[2]  hash {s = last sequence number, t = newest admitted ms}
-- ARGV     now_ms, window_ms, limit, n, use_server_time ("1" or "0")
-- Returns  {allowed (0|1), remaining, retry_after_ms, reset_after_ms}
-- Helpers (fdiv, int, ...): prelude.lua, which Go puts before this file.

local now, w, limit, n = strict_args()
local req = now

local last = tonumber(redis.call('HGET', KEYS[2], 't')) or 0
if now < last then now = last end
-- The window is (now - W, now].
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - w)
local count = redis.call('ZCARD', KEYS[1])

local allowed, retry = 0, 0
if count + n <= limit then
  allowed = 1
  log_add(KEYS[1], KEYS[2], now, n, now, w)
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

return strict_reply(req, now, allowed, limit - count, retry, reset)
