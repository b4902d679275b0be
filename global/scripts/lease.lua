-- Hybrid mode: admit now, return unspent lease, reserve a new lease, report
-- demand, and answer the key's global counts; one atomic step per key, for
-- one key or for a batch of keys (a sync pass sends many in one call: Redis
-- pays its per-call cost once per batch instead of once per key).
-- Each key has the layout of sliding_window.lua, plus attempts per window:
-- KEYS[2i-1]  key i: hash {w, c, p, t, ac = attempts in window w,
--             ap = in window w-1, v = version, incremented by every call}
-- KEYS[2i]    key i's operation key, when ARGV[16(i-1)+12] is "1" (else any
--             key of the same slot, unused). A call that gives tokens back is
--             not idempotent, and clients re-send a call whose answer timed
--             out; with an operation key a repeated call answers what the
--             first one did and changes nothing.
-- ARGV        16 per key: now_ms, window_ms, limit, n (to admit now; 0 =
--             sync only), want (lease to reserve), return_window_1,
--             return_n_1, return_window_2, return_n_2 (unspent leases given
--             back), attempts (requests seen since the last report), fixed
--             ("1": no previous-window weight), has_op ("1": KEYS[2i] is
--             the operation key), known_window, known_prev, known_cur,
--             known_version (the counts the caller last learned of the key,
--             its own unspent leases included; version 0: none)
-- A key the caller knew in a window still live cannot have expired (every
-- write sets a TTL of two windows): if it is missing, Redis lost it (a
-- restart, a flush, a failover), and the key starts again from what the
-- caller knew rather than from zero, so that a data loss hands no user a
-- fresh budget.
-- Counts include every lease reserved and not returned, so leased tokens are
-- spent locally without ever exceeding the limit.
-- Returns  one reply per key: 9 integers {allowed (0|1), granted, prev,
--          cur, prev_attempts, cur_attempts, now_used, version, restored
--          (1: the key was missing and started from the caller's counts)}, or, when
--          that key's commands failed (a foreign value under it, say), the
--          error's text. One key's error changes nothing of the others'.
-- Helpers (fdiv, int, ...): prelude.lua, which Go puts before this file.

local function lease(key, opkey, a)
  if opkey then
    local done = redis.call('GET', opkey)
    if done then
      local r = {}
      for v in string.gmatch(done, '[^,]+') do r[#r + 1] = tonumber(v) end
      return r
    end
  end

  local now = tonumber(ARGV[a + 1])
  local w = tonumber(ARGV[a + 2])
  local limit = tonumber(ARGV[a + 3])
  local n = tonumber(ARGV[a + 4])
  local want = tonumber(ARGV[a + 5])
  local attempts = tonumber(ARGV[a + 10])
  local fixed = ARGV[a + 11] == '1'

  local st = redis.call('HMGET', key, 'w', 'c', 'p', 't', 'ac', 'ap', 'v')
  local version = tonumber(st[7])
  if version == nil then
    -- A new key's versions start at the server's clock in microseconds, so
    -- that a key created again (after a DEL, an eviction, a restart)
    -- answers higher versions than any it had before: instances then adopt
    -- its counts at once. (A key would need more than one call per
    -- microsecond over its life to break this.)
    version = server_us()
  end
  version = version + 1
  local last = tonumber(st[4]) or 0
  if now < last then now = last end
  local idx = fdiv(now, w)
  local prev, cur, ap, ac = 0, 0, 0, 0
  local sidx = tonumber(st[1])
  local restored = 0
  local kv = tonumber(ARGV[a + 16])
  if sidx == nil and kv > 0 then
    local kw, kp, kc = tonumber(ARGV[a + 13]), tonumber(ARGV[a + 14]), tonumber(ARGV[a + 15])
    if kw == idx then
      sidx, st[2], st[3], restored = idx, kc, kp, 1
    elseif kw == idx - 1 then
      sidx, st[2], restored = kw, kc, 1
    end
    if restored == 1 then version = math.max(version, kv + 1) end
  end
  if sidx == idx then
    cur, prev = tonumber(st[2]) or 0, tonumber(st[3]) or 0
    ac, ap = tonumber(st[5]) or 0, tonumber(st[6]) or 0
  elseif sidx == idx - 1 then
    prev, ap = tonumber(st[2]) or 0, tonumber(st[5]) or 0
  end

  for i = a + 6, a + 8, 2 do
    local ret_w, ret_n = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    if ret_n > 0 then
      if ret_w == idx then
        cur = math.max(cur - ret_n, 0)
      elseif ret_w == idx - 1 then
        prev = math.max(prev - ret_n, 0)
      end
    end
  end
  ac = ac + attempts

  local elapsed = now - idx * w
  local pw = prev
  if fixed then pw = 0 end
  local function scaled(c) return pw * (w - elapsed) + c * w end

  local allowed = 1
  if n > 0 then
    if scaled(cur + n) <= limit * w then cur = cur + n else allowed = 0 end
  end
  local granted = 0
  if allowed == 1 and want > 0 then
    granted = math.min(want, fdiv(limit * w - scaled(cur), w))
    if granted < 0 then granted = 0 end
    cur = cur + granted
  end

  redis.call('HSET', key, 'w', int(idx), 'c', int(cur), 'p', int(prev), 't', int(now), 'ac', int(ac), 'ap', int(ap), 'v', int(version))
  redis.call('PEXPIRE', key, 2 * w)
  local r = {allowed, granted, prev, cur, ap, ac, now, version, restored}
  if opkey then
    local parts = {}
    for i, v in ipairs(r) do parts[i] = int(v) end
    redis.call('SET', opkey, table.concat(parts, ','), 'PX', 2 * w)
  end
  return r
end

local out = {}
for i = 1, #KEYS / 2 do
  local a = 16 * (i - 1)
  local opkey = nil
  if ARGV[a + 12] == '1' then opkey = KEYS[2 * i] end
  -- A key fails on its first command in practice (a foreign value under
  -- it) and writes nothing; a later failure (out of memory) may leave its
  -- writes, which the caller treats as a lost answer.
  local ok, r = pcall(lease, KEYS[2 * i - 1], opkey, a)
  if ok then
    out[i] = r
  elseif type(r) == 'table' and r.err then
    out[i] = r.err
  else
    out[i] = tostring(r)
  end
end
return out
