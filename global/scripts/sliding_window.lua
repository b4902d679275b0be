-- Sliding window (two-window weighted counter). Mirrors approx.go.
-- key      hash {w = window index, c = current count, p = previous count, t = newest admitted ms}
-- Called as decide(key, _, now, w, limit, n, mode, _, put) (see
-- strict_main in prelude.lua): mode 0 takes n, 1 peeks, 2 refunds n; its
-- writes go through put (redis.call, or multi.lua's deferral).
-- Returns  {allowed (0|1), remaining, retry_after_ms, reset_after_ms}
-- Helpers (fdiv, int, ...): prelude.lua, which Go puts before this file.

local function sliding_window(key, _, now, w, limit, n, mode, _, put)
  local req = now

  local st = redis.call('HMGET', key, 'w', 'c', 'p', 't')
  if mode == 2 then
    -- Refund n of the window of req: the current count if the key is still
    -- in it, the previous one if the key moved to the next window.
    local sidx, ridx = tonumber(st[1]), fdiv(req, w)
    local f = nil
    if sidx == ridx then f = 2 elseif sidx == ridx + 1 then f = 3 end
    if f then
      st[f] = math.max((tonumber(st[f]) or 0) - n, 0)
      put('HSET', key, 'c', int(tonumber(st[2]) or 0), 'p', int(tonumber(st[3]) or 0))
    end
    n = 1
  end
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
    if mode == 0 then
      cur = cur + n
      put('HSET', key, 'w', int(idx), 'c', int(cur), 'p', int(prev), 't', int(now))
      put('PEXPIRE', key, 2 * w)
    end
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

  return strict_reply(req, now, allowed, remaining, retry, reset)
end
