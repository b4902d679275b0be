-- Hybrid mode, a key's decision that gives nothing back and asks for no
-- lease (a sparse user's): admit n now and answer the key's counts, as
-- lease.lua would for the same call, at about the cost of a strict
-- decision: ten arguments, no op record, no grant; a key Redis lost is
-- restored from the caller's counts as lease.lua does.
-- KEYS[1]  the key, in lease.lua's layout
-- ARGV     now_ms, window_ms, limit, n (> 0), attempts (requests seen since
--          the last report, n not among them), fixed ("1": no
--          previous-window weight), known_window, known_prev,
--          known_cur, known_version (as in lease.lua)
-- Returns  lease.lua's reply for one key: {{allowed, granted (0), prev,
--          cur, prev_attempts, cur_attempts, now_used, version (0: the key
--          has none), restored, op (0)}}
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
local kv = tonumber(ARGV[10])
local prev, cur, ap, ac, restored = hybrid_counts(st, idx, tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), kv)
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
-- key, everything.
local fields
if tonumber(st[1]) == idx and restored == 0 then
  fields = {'c', int(cur), 't', int(now), 'ac', int(ac)}
else
  fields = {'w', int(idx), 'c', int(cur), 'p', int(prev), 't', int(now), 'ac', int(ac), 'ap', int(ap)}
end
if version ~= nil then
  fields[#fields + 1] = 'v'
  fields[#fields + 1] = int(version)
end
redis.call('HSET', key, unpack(fields))
redis.call('PEXPIRE', key, 2 * w)
return {{allowed, 0, prev, cur, ap, ac, now, version or 0, restored, 0}}
