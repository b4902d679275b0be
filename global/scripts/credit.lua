-- Credit: add admissions decided without Redis (while it was unreachable, or
-- before it lost its data) to a key's counts, for every algorithm, once.
-- KEYS[1]  the key (layout of the algorithm's script)
-- KEYS[2]  the sliding log's hash ("...:m"); absent for the other kinds
-- ARGV     kind ("w": sliding or fixed window, strict or hybrid; "b": token
--          bucket; "l": sliding log), window_ms, limit, idx (the window
--          index of the newer admissions), n_cur (admitted in window idx),
--          n_prev (admitted in window idx-1), last_ms (the newest of them),
--          version ("1": bump the hybrid version so instances adopt the
--          counts), known_window, known_prev, known_cur, known_version (a
--          hybrid instance's last knowledge of the key, as in lease.lua: a
--          key missing while known in a live window was lost, and starts
--          again from it), op_stream, op_seq (the credit's op: the
--          hash, KEYS[2] or else KEYS[1], records the stream's last two
--          ops applied; see prelude.lua)
-- Returns  1 if the credit was applied (in whole or in part), 0 if every
--          admission it carried belongs to a window that is over; a copy
--          of an op recorded answers what it did and changes nothing. An
--          op older than the recorded ones (stale) may have been applied
--          or not: it applies, since counting admissions twice errs on the
--          safe side and dropping them would not, and leaves the record.
-- Helpers (fdiv, int, ...): prelude.lua, which Go puts before this file.

local hkey = KEYS[2] or KEYS[1]
local stream, seq = ARGV[13], tonumber(ARGV[14])
local op, x, ops = op_state(redis.call('HGET', hkey, stream), seq)
if op == 1 then return x % 2 end

local kind = ARGV[1]
local w = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local idx = tonumber(ARGV[4])
local ncur = tonumber(ARGV[5])
local nprev = tonumber(ARGV[6])
local last = tonumber(ARGV[7])
local applied = 0
local at = last -- the key's newest time after the call

if kind == 'w' then
  local st = redis.call('HMGET', KEYS[1], 'w', 'c', 'p', 't', 'v')
  local sidx = tonumber(st[1])
  local c, p = tonumber(st[2]) or 0, tonumber(st[3]) or 0
  local t = tonumber(st[4]) or 0
  local kv = tonumber(ARGV[12]) or 0
  if sidx == nil and kv > 0 then
    local kw = tonumber(ARGV[9])
    if kw == idx or kw == idx - 1 or kw == idx + 1 then
      sidx, c, p = kw, tonumber(ARGV[11]), tonumber(ARGV[10])
    end
  end
  if sidx == nil or sidx < idx then
    if sidx == idx - 1 then p = c else p = 0 end
    c, sidx = 0, idx
  end
  if sidx == idx then
    c, p, applied = c + ncur, p + nprev, 1
  elseif sidx == idx + 1 then
    p, applied = p + ncur, 1
  end
  at = math.max(t, last)
  if applied == 1 then
    local fields = {'w', int(sidx), 'c', int(c), 'p', int(p), 't', int(at)}
    if ARGV[8] == '1' then
      local v = tonumber(st[5])
      if v == nil then -- as lease.lua starts a new key's versions
        v = server_us()
      end
      fields[#fields + 1] = 'v'
      fields[#fields + 1] = int(math.max(v, kv) + 1)
    end
    redis.call('HSET', KEYS[1], unpack(fields))
    redis.call('PEXPIRE', KEYS[1], 2 * w)
  end
elseif kind == 'b' then
  -- A token is w units; limit units drain per ms (token_bucket.lua).
  local st = redis.call('HMGET', KEYS[1], 'l', 't')
  local level, t = tonumber(st[1]) or 0, tonumber(st[2]) or 0
  local now = math.max(t, last)
  at = now
  level = math.max(level - (now - t) * limit, 0)
  local add = (ncur + nprev) * w - (now - last) * limit
  if add > 0 then
    level, applied = level + math.min(add, limit * w), 1
    redis.call('HSET', KEYS[1], 'l', int(level), 't', int(now))
    redis.call('PEXPIRE', KEYS[1], 2 * w)
  end
else
  -- The sliding log: the admissions as members at last_ms, at most limit.
  local t = tonumber(redis.call('HGET', KEYS[2], 't')) or 0
  local now = math.max(t, last)
  at = now
  local n = math.min(ncur + nprev, limit)
  if last > now - w and n > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - w)
    log_add(KEYS[1], KEYS[2], last, n, now, w)
    applied = 1
  end
end

-- The record: in a hash that exists (a credit that applied nothing to a
-- missing key would apply nothing again), which keeps its TTL.
if op == 0 and (applied == 1 or redis.call('EXISTS', hkey) == 1) then
  local idx_at = fdiv(at, w)
  redis.call('HSET', hkey, stream, op_record(ops, seq, idx_at, applied))
  op_prune(hkey, idx_at)
end
return applied
