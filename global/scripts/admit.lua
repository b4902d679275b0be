-- Hybrid mode, a key's decision that gives nothing back and asks for no
-- lease (a sparse user's): admit n now and answer the key's counts, as
-- lease.lua would for the same call, at no more than the cost of a strict
-- decision: no op record, no grant, no TIME; as few arguments as strict's
-- when the caller knows nothing of the key, an answer of 8 integers, no
-- field written that would hold 0 on a new key. A key Redis lost is
-- restored from the caller's counts as lease.lua does.
-- Its fields go to redis.call as numbers (see int in prelude.lua).
-- KEYS[1]  the key, in lease.lua's layout
-- ARGV     now_ms, window_ms, limit, n (> 0), attempts (requests seen since
--          the last report, n not among them), fixed ("1": no
--          previous-window weight), then, only when the caller knows the
--          key (known_version > 0), known_window, known_prev, known_cur,
--          known_version (as in lease.lua)
-- Returns  {allowed, prev, cur, prev_attempts, cur_attempts, now_used,
--          version (0: the key has none), restored}: lease.lua's reply
--          for one key without its granted and op.
local key = KEYS[1]
local now, w, limit, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local attempts, fixed = tonumber(ARGV[5]), ARGV[6] == '1'

local st = redis.call('HMGET', key, 'w', 'c', 'p', 't', 'ac', 'ap', 'v')
-- A key this script creates has no version (lease.lua gives it one, from
-- the server's clock, at its first call there): the call costs no TIME,
-- and its answers carry version 0, which the caller adopts only while it
-- knows no versioned answer (hybrid.go, apply).
local version = tonumber(st[7])
if version ~= nil then version = version + 1 end
local last = tonumber(st[4]) or 0
if now < last then now = last end
local idx = fdiv(now, w)
local kv = tonumber(ARGV[10]) or 0
local prev, cur, ap, ac, restored = hybrid_counts(st, idx, tonumber(ARGV[7]) or 0, tonumber(ARGV[8]) or 0, tonumber(ARGV[9]) or 0, kv)
if restored == 1 then version = math.max(version or 0, kv + 1) end -- lost, not expired: see lease.lua
ac = ac + attempts + n

local elapsed = now - idx * w
local pw = prev
if fixed then pw = 0 end
local allowed = 0
if pw * (w - elapsed) + (cur + n) * w <= limit * w then
  cur, allowed = cur + n, 1
end
-- Write what changed: in the key's own window (the common case) only the
-- count, the time and the attempts; after a roll, a restore or on a new
-- key, everything but the zeros of fields the key does not hold (HMGET
-- answered false: absent reads as 0); and the TTL at every write, as
-- lease.lua sets it.
local same = tonumber(st[1]) == idx and restored == 0
local fields
if same then
  fields = {'c', cur, 't', now, 'ac', ac}
else
  fields = {'w', idx, 'c', cur, 't', now, 'ac', ac}
  if prev ~= 0 or st[3] then fields[#fields + 1] = 'p'; fields[#fields + 1] = prev end
  if ap ~= 0 or st[6] then fields[#fields + 1] = 'ap'; fields[#fields + 1] = ap end
end
if version ~= nil then
  fields[#fields + 1] = 'v'
  fields[#fields + 1] = version
end
redis.call('HSET', key, unpack(fields))
redis.call('PEXPIRE', key, 2 * w)
return {allowed, prev, cur, ap, ac, now, version or 0, restored}
