-- Several rules of one user, all or nothing: every rule admits its n and
-- all are counted, or nothing is. Go builds this script from the prelude,
-- the four strict files (which define sliding_window, sliding_log,
-- fixed_window and token_bucket), lease.lua (which defines lease, a hybrid
-- key's exchange) and this file. The keys are one user's, so one hash tag:
-- one slot on a cluster.
-- KEYS     each strict rule's keys, in order (a sliding log's two, others'
--          one), then each hybrid key
-- ARGV     now_ms, use_server_time ("1" or "0"), the number of strict
--          rules, then per strict rule: algorithm (0 sliding window, 1
--          sliding log, 2 fixed window, 3 token bucket), window_ms, limit,
--          n, burst; then per hybrid key lease.lua's arguments, packed in
--          one string (naming no op: nothing given back). No two rules
--          share a key.
-- Returns  {0, then per strict rule allowed (1), remaining,
--          retry_after_ms, reset_after_ms, then per hybrid key lease.lua's
--          10 integers} when every rule admits (all counted), or {i, then
--          the record of rule i} for the first rule i (from 1, strict rules
--          first) that denies: nothing was written, so a hybrid record's
--          counts and version are the key's as read, not as written.
local decide = {[0] = sliding_window, [1] = sliding_log, [2] = fixed_window, [3] = token_bucket}

local now = tonumber(ARGV[1])
if ARGV[2] == '1' then now = fdiv(server_us(), 1000) end
local nstrict = tonumber(ARGV[3])
local rules, k, a = {}, 1, 4
for _ = 1, nstrict do
  local alg = tonumber(ARGV[a])
  local r = {decide = decide[alg], k1 = KEYS[k], w = tonumber(ARGV[a + 1]), limit = tonumber(ARGV[a + 2]),
    n = tonumber(ARGV[a + 3]), burst = tonumber(ARGV[a + 4])}
  if alg == 1 then r.k2, k = KEYS[k + 1], k + 2 else k = k + 1 end
  rules[#rules + 1] = r
  a = a + 5
end

-- Decide every rule, its writes held back: a script runs alone, so what
-- one rule reads no other rule's writes change (no two share a key). A
-- sliding log's take reads what it writes (its sequence number), so it
-- only peeks here and takes once every rule admitted.
local writes = {}
local function defer(...) writes[#writes + 1] = {...} end
local out = {0}
for i, r in ipairs(rules) do
  local mode = 0
  if r.decide == sliding_log then mode = 1 end
  local d = r.decide(r.k1, r.k2, now, r.w, r.limit, r.n, mode, r.burst, defer)
  if d[1] == 0 then return {i, 0, d[2], d[3], d[4]} end
  for j = 1, 4 do out[#out + 1] = d[j] end
end
for j = k, #KEYS do
  local d = lease(KEYS[j], defer, unpack_args(lease_args, ARGV[a]))
  if d[1] == 0 then
    d[8] = tonumber(redis.call('HGET', KEYS[j], 'v')) or 0 -- not written: the version as it is
    table.insert(d, 1, nstrict + j - k + 1)
    return d
  end
  for m = 1, 10 do out[#out + 1] = d[m] end
  a = a + 1
end
for _, c in ipairs(writes) do redis.call(unpack(c)) end
for i, r in ipairs(rules) do
  if r.decide == sliding_log then
    local d = r.decide(r.k1, r.k2, now, r.w, r.limit, r.n, 0)
    for j = 1, 4 do out[4 * i - 3 + j] = d[j] end
  end
end
return out
