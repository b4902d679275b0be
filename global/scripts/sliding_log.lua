-- Sliding log: the timestamp of every admitted request. Exact. Mirrors exact.go.
-- zkey     sorted set: member = unique sequence number, score = ms
-- hkey     hash {s = last sequence number, t = newest admitted ms}
-- Called as decide(zkey, hkey, now, w, limit, n, mode) (see strict_main in
-- prelude.lua): mode 0 takes n, 1 peeks, 2 refunds n.
-- Returns  {allowed (0|1), remaining, retry_after_ms, reset_after_ms}
-- Helpers (fdiv, int, ...): prelude.lua, which Go puts before this file.
local function sliding_log(zkey, hkey, now, w, limit, n, mode)
  local req = now

  local last = tonumber(redis.call('HGET', hkey, 't')) or 0
  if now < last then now = last end
  -- The window is (now - W, now]. A peek reads it without dropping what left.
  local lo = '(' .. int(now - w)
  if mode == 2 then
    -- Refund: drop the n newest entries of the window.
    local e = redis.call('ZRANGE', zkey, '+inf', lo, 'BYSCORE', 'REV', 'LIMIT', 0, n)
    if #e > 0 then redis.call('ZREM', zkey, unpack(e)) end
    n = 1
  end
  if mode == 0 then redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now - w) end
  local count = redis.call('ZCOUNT', zkey, lo, '+inf')

  local allowed, retry = 0, 0
  if count + n <= limit then
    allowed = 1
    if mode == 0 then
      log_add(zkey, hkey, now, n, now, w)
      count = count + n
    end
  else
    -- The oldest count - (limit - n) entries must leave the window.
    local k = count - (limit - n)
    local e = redis.call('ZRANGE', zkey, lo, '+inf', 'BYSCORE', 'LIMIT', k - 1, 1, 'WITHSCORES')
    retry = tonumber(e[2]) + w - now
  end
  local reset = 0
  if count > 0 then
    local e = redis.call('ZRANGE', zkey, -1, -1, 'WITHSCORES')
    reset = tonumber(e[2]) + w - now
  end

  return strict_reply(req, now, allowed, limit - count, retry, reset)
end
