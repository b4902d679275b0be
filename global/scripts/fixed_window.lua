-- Fixed window: a counter per aligned window [k*W, (k+1)*W). Mirrors exact.go.
-- key      hash {w = window index, c = count, t = newest admitted ms}
-- Called as decide(key, _, now, w, limit, n, mode, _, put) (see
-- strict_main in prelude.lua): mode 0 takes n, 1 peeks, 2 refunds n; its
-- writes go through put (redis.call, or multi.lua's deferral).
-- Returns  {allowed (0|1), remaining, retry_after_ms, reset_after_ms}
-- Helpers (fdiv, int, ...): prelude.lua, which Go puts before this file.

local function fixed_window(key, _, now, w, limit, n, mode, _, put)
  local req = now

  local st = redis.call('HMGET', key, 'w', 'c', 't')
  if mode == 2 then
    -- Refund n of the window of req, if the key is still in it.
    if tonumber(st[1]) == fdiv(req, w) then
      st[2] = math.max((tonumber(st[2]) or 0) - n, 0)
      put('HSET', key, 'c', int(st[2]))
    end
    n = 1
  end
  local last = tonumber(st[3]) or 0
  if now < last then now = last end
  local idx = fdiv(now, w)
  local count = 0
  if tonumber(st[1]) == idx then count = tonumber(st[2]) or 0 end
  local win_end = (idx + 1) * w - now

  local allowed, retry = 0, 0
  if count + n <= limit then
    allowed = 1
    if mode == 0 then
      count = count + n
      put('HSET', key, 'w', int(idx), 'c', int(count), 't', int(now))
      put('PEXPIRE', key, 2 * w)
    end
  else
    retry = win_end
  end
  local reset = 0
  if count > 0 then reset = win_end end

  return strict_reply(req, now, allowed, limit - count, retry, reset)
end
