-- Sliding log: the timestamp of every admitted request. Exact. Mirrors exact.go.
-- KEYS[1]  sorted set: member = unique sequence number, score = ms
-- KEYS[2]  hash {s = last sequence number, t = newest admitted ms}
-- ARGV     now_ms, window_ms, limit, n, use_server_time ("1" or "0"),
--          mode (strict_mode: "0" take, "1" peek, "2" refund n)
-- Returns  {allowed (0|1), remaining, retry_after_ms, reset_after_ms}
-- Helpers (fdiv, int, ...): prelude.lua, which Go puts before this file.

local now, w, limit, n = strict_args()
local req = now
local mode = strict_mode()

local last = tonumber(redis.call('HGET', KEYS[2], 't')) or 0
if now < last then now = last end
-- The window is (now - W, now]. A peek reads it without dropping what left.
local lo = '(' .. int(now - w)
if mode == 2 then
  -- Refund: drop the n newest entries of the window.
  local e = redis.call('ZRANGE', KEYS[1], '+inf', lo, 'BYSCORE', 'REV', 'LIMIT', 0, n)
  if #e > 0 then redis.call('ZREM', KEYS[1], unpack(e)) end
  n = 1
end
if mode == 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - w) end
local count = redis.call('ZCOUNT', KEYS[1], lo, '+inf')

local allowed, retry = 0, 0
if count + n <= limit then
  allowed = 1
  if mode == 0 then
    log_add(KEYS[1], KEYS[2], now, n, now, w)
    count = count + n
  end
else
  -- The oldest count - (limit - n) entries must leave the window.
  local k = count - (limit - n)
  local e = redis.call('ZRANGE', KEYS[1], lo, '+inf', 'BYSCORE', 'LIMIT', k - 1, 1, 'WITHSCORES')
  retry = tonumber(e[2]) + w - now
end
local reset = 0
if count > 0 then
  local e = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  reset = tonumber(e[2]) + w - now
end

return strict_reply(req, now, allowed, limit - count, retry, reset)
