-- Hybrid mode: admit now, return unspent lease, reserve a new lease, report
-- demand, and answer the key's global counts; one atomic step per key, for
-- one key or for a batch of keys (a sync pass sends many in one call: Redis
-- pays its per-call cost once per batch instead of once per key).
-- Each key has the layout of sliding_window.lua, plus attempts per window:
-- KEYS[i]     key i: hash {w, c, p, t, ac = attempts in window w,
--             ap = in window w-1, v = version, incremented by every call
--             that changes it; and one field per op stream, see below}
-- ARGV[i]     key i's arguments, packed in one string (lease_args below):
--             now_ms, window_ms, limit, n (to admit now; 0 = sync only),
--             want (lease to reserve), return_window_1, return_n_1,
--             return_window_2, return_n_2 (unspent leases given back),
--             attempts (requests seen since the last report; n is counted
--             as one more of them), fixed (1: no previous-window weight),
--             known_window, known_prev, known_cur, known_version (the
--             counts the caller last learned of the key, its own unspent
--             leases included; version 0: none), op_seq, op_stream (a
--             field name, or "": the call names no op)
-- A call that gives tokens back is not idempotent, and clients re-send a
-- call whose answer timed out: such a call names an op (prelude.lua), and
-- the key's field op_stream records the stream's last two ops applied. A
-- copy of one answers the key's counts with the op's own allowed, and its
-- granted if the copy's now_ms is still of the key's window (else 0: the
-- grant stays counted, unspent), and changes nothing; so does an op older
-- than both (stale), which admits and grants nothing.
-- A key the caller knew in a window still live cannot have expired (every
-- write sets a TTL of two windows): if it is missing, Redis lost it (a
-- restart, a flush, a failover), and the key starts again from what the
-- caller knew rather than from zero, so that a data loss hands no user a
-- fresh budget.
-- Counts include every lease reserved and not returned, so leased tokens are
-- spent locally without ever exceeding the limit.
-- Returns  one reply per key: 10 integers packed in a string (lease_reply
--          below) {allowed (0|1), granted, prev, cur, prev_attempts,
--          cur_attempts, now_used, version, restored (1: the key was
--          missing and started from the caller's counts), op (0: applied,
--          1: a copy of the op applied before, 2: a stale op; for 1 and 2
--          nothing changed)}, or, when that key's commands failed (a
--          foreign value under it, say), {the error's text}. One key's
--          error changes nothing of the others'.
-- Helpers (fdiv, int, op_state, ...): prelude.lua, which Go puts before
-- this file. The file defines lease, one key's exchange, and lease_main,
-- the script's entry, which Go calls at its end (`return lease_main()`);
-- multi.lua calls lease too, for the hybrid keys of AllowAll, with its
-- writes deferred until every rule has admitted.

-- lease decides key from its arguments, unpacked (lease_args) and writes
-- through put (redis.call, or multi.lua's collector; an op's prune reads
-- the key first, so multi.lua sends no op).
local function lease(key, put, req_now, w, limit, n, want, ret_w1, ret_n1, ret_w2, ret_n2, attempts, fixed,
                     kw, kp, kc, kv, seq, stream)
  local now = req_now
  fixed = fixed == 1

  local st
  local op, x, ops = 0, 0, nil
  if stream ~= '' then
    st = redis.call('HMGET', key, 'w', 'c', 'p', 't', 'ac', 'ap', 'v', stream)
    op, x, ops = op_state(st[8], seq)
  else
    st = redis.call('HMGET', key, 'w', 'c', 'p', 't', 'ac', 'ap', 'v')
  end
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
  local prev, cur, ap, ac, restored = hybrid_counts(st, idx, kw, kp, kc, kv)
  if restored == 1 then version = math.max(version, kv + 1) end
  local prev0 = prev
  if op ~= 0 then
    -- A copy of the recorded op, or an older op: the key as it is. (A
    -- record lives in the key, so the key exists: it was not restored.)
    local allowed, granted = 0, 0
    if op == 1 then
      allowed = x % 2
      if fdiv(req_now, w) == idx then granted = fdiv(x, 8) end
    end
    return {allowed, granted, prev, cur, ap, ac, now, tonumber(st[7]) or 0, 0, op}
  end

  for i = 1, 2 do
    local ret_w, ret_n = ret_w1, ret_n1
    if i == 2 then ret_w, ret_n = ret_w2, ret_n2 end
    if ret_n > 0 then
      if ret_w == idx then
        cur = math.max(cur - ret_n, 0)
      elseif ret_w == idx - 1 then
        prev = math.max(prev - ret_n, 0)
      end
    end
  end
  ac = ac + attempts + n -- the request decided now is one of them

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

  -- Write what changed, as numbers (see int in prelude.lua): in the key's
  -- own window (a sync pass's common case) the count, the time, the
  -- attempts, the version, and the previous count if a return took from
  -- it; after a roll, a restore or on a new key, every field.
  -- The TTL: two windows from every write. Set once a window (at its first
  -- write) it would be enough only while the callers' clock runs no slower
  -- than Redis' own: the TTL runs in Redis' time, windows in the caller's
  -- timestamps, and a key still written in window idx+1 of a caller whose
  -- time lags (a simulator, queued requests stamped at arrival) would
  -- expire under its users and come back restored from a stale copy. Set
  -- at every write, a key lives while it is used, whatever the clocks.
  local same = tonumber(st[1]) == idx and restored == 0
  local fields = {'c', cur, 't', now, 'ac', ac, 'v', version}
  if not same then
    fields[9], fields[10], fields[11], fields[12], fields[13], fields[14] = 'w', idx, 'p', prev, 'ap', ap
  elseif prev ~= prev0 then
    fields[9], fields[10] = 'p', prev
  end
  if stream ~= '' then
    fields[#fields + 1] = stream
    fields[#fields + 1] = op_record(ops, seq, idx, 8 * granted + allowed)
  end
  put('HSET', key, unpack(fields))
  if stream ~= '' then op_prune(key, idx) end
  put('PEXPIRE', key, 2 * w)
  return {allowed, granted, prev, cur, ap, ac, now, version, restored, 0}
end

-- lease_args is the struct format of a key's arguments, packed in one
-- string (global/lease.go, packArgs): the request's time, window, limit,
-- n, want, the two returns' window and n, attempts (int64 each), fixed (a
-- byte), the known window, prev, cur and version, the op's seq (int64
-- each), and the op stream (a length byte, then its bytes). One unpack
-- costs Redis a fraction of 17 arguments read with tonumber.
local lease_args = '<i8i8i8i8i8i8i8i8i8i8Bi8i8i8i8i8Bc0'
-- lease_reply is the struct format of a key's answer: lease's 10 integers.
local lease_reply = '<i8i8i8i8i8i8i8i8i8i8'

-- Redis has the struct library; an embedded store (miniredis, the demo's
-- default) may not, and gets the same formats in plain Lua, slower but
-- exact for every integer below 2^53 (lease_portable_test.go checks the
-- two agree on a real Redis).
local function portable_int(s, i) -- the little-endian int64 at s[i..i+7]
  local b1, b2, b3, b4, b5, b6, b7, b8 = string.byte(s, i, i + 7)
  local hi = b5 + 256 * (b6 + 256 * (b7 + 256 * b8))
  if hi >= 2147483648 then hi = hi - 4294967296 end
  return hi * 4294967296 + (b1 + 256 * (b2 + 256 * (b3 + 256 * b4)))
end
local function portable_unpack_args(_, s)
  local v = {}
  for j = 0, 9 do v[#v + 1] = portable_int(s, 1 + 8 * j) end
  v[#v + 1] = string.byte(s, 81)
  for j = 0, 4 do v[#v + 1] = portable_int(s, 82 + 8 * j) end
  local len = string.byte(s, 122)
  v[#v + 1] = string.sub(s, 123, 122 + len)
  return unpack(v)
end
local function portable_pack_reply(_, ...)
  local out = {}
  for _, x in ipairs({...}) do
    local lo = x % 4294967296
    local hi = (x - lo) / 4294967296 % 4294967296
    for _, h in ipairs({lo, hi}) do
      out[#out + 1] = string.char(h % 256, fdiv(h, 256) % 256, fdiv(h, 65536) % 256, fdiv(h, 16777216) % 256)
    end
  end
  return table.concat(out)
end
local unpack_args, pack_reply = portable_unpack_args, portable_pack_reply
if rawget(_G, 'struct') then unpack_args, pack_reply = struct.unpack, struct.pack end

local function lease_main()
  local out = {}
  for i = 1, #KEYS do
    -- A key fails on its first command in practice (a foreign value under
    -- it) and writes nothing; a later failure (out of memory) may leave its
    -- writes, which the caller treats as a lost answer.
    local ok, r = pcall(lease, KEYS[i], redis.call, unpack_args(lease_args, ARGV[i]))
    if ok then
      out[i] = pack_reply(lease_reply, unpack(r))
    elseif type(r) == 'table' and r.err then
      out[i] = {r.err}
    else
      out[i] = {tostring(r)}
    end
  end
  return out
end
