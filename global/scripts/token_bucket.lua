-- Token bucket as GCRA in integer form. Mirrors exact.go.
-- A token is W units; the bucket (burst*W units) drains `limit` units per
-- ms: it holds at most burst tokens and refills limit per window.
-- key      hash {l = units in use, t = newest admitted ms}
-- Called as decide(key, _, now, w, limit, n, mode, burst, put) (see
-- strict_main in prelude.lua): mode 0 takes n, 1 peeks, 2 refunds n; burst
-- ≤ 2*limit, so that a full bucket drains within 2 windows, the key's TTL;
-- its writes go through put (redis.call, or multi.lua's deferral).
-- Returns  {allowed (0|1), remaining, retry_after_ms, reset_after_ms}
-- Helpers (fdiv, int, ...): prelude.lua, which Go puts before this file.
local function cdiv(x, y)
  if x <= 0 then return 0 end
  return fdiv(x + y - 1, y)
end

local function token_bucket(key, _, now, w, limit, n, mode, burst, put)
  local req = now

  local st = redis.call('HMGET', key, 'l', 't')
  local last = tonumber(st[2]) or 0
  if now < last then now = last end
  local level = 0
  if now - last < 2 * w then
    level = (tonumber(st[1]) or 0) - (now - last) * limit
    if level < 0 then level = 0 end
  end

  if mode == 2 then
    -- Refund: the theoretical arrival time moves back n emission intervals,
    -- never before now (an empty level).
    if st[2] then
      level = math.max(level - n * w, 0)
      put('HSET', key, 'l', int(level), 't', int(now))
    end
    n = 1
  end

  local allowed, retry = 0, 0
  if level + n * w <= burst * w then
    allowed = 1
    if mode == 0 then
      level = level + n * w
      put('HSET', key, 'l', int(level), 't', int(now))
      put('PEXPIRE', key, 2 * w)
    end
  else
    retry = cdiv(level + n * w - burst * w, limit)
  end

  return strict_reply(req, now, allowed, fdiv(burst * w - level, w), retry, cdiv(level, limit))
end
