-- Prelude: the helpers the scripts of this directory share. Go prepends it
-- to each of them (global/scripts.go), so that every helper exists once.
local function fdiv(x, y) -- floor(x / y) for integers, exact past 2^31
  local q = math.floor(x / y)
  if q * y > x then q = q - 1 elseif (q + 1) * y <= x then q = q + 1 end
  return q
end
-- int(x) is x in exact decimal, never 1e+15: for strings a script builds.
-- An argument of redis.call needs none: Redis writes a number argument in
-- decimal itself, exact for every integer below 2^53 (all values here, see
-- maxLimitWindow in approx.go), at a fraction of string.format's cost.
local function int(x) return string.format('%.0f', x) end

-- The server's clock (TIME) in microseconds: below 2^53, so exact.
local function server_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- A strict script's entry: Go ends each strict file (which defines its
-- algorithm's decide function) with `return strict_main(<function>)`.
-- KEYS     the key or two that decide takes (a sliding log's two)
-- ARGV     now_ms, window_ms, limit, n, use_server_time ("1": now is the
--          server's clock instead), mode ("0" take n; "1" peek: answer for
--          n, change nothing; "2" refund n, then answer as a peek of one),
--          burst (a token bucket's; absent: limit)
-- decide writes through its last argument, put (here redis.call itself);
-- multi.lua calls the same functions for several rules in one call, and
-- defers their writes until every rule has admitted.
local function strict_main(decide)
  local now, limit = tonumber(ARGV[1]), tonumber(ARGV[3])
  if ARGV[5] == '1' then now = fdiv(server_us(), 1000) end
  return decide(KEYS[1], KEYS[2], now, tonumber(ARGV[2]), limit, tonumber(ARGV[4]),
    tonumber(ARGV[6]) or 0, tonumber(ARGV[7]) or limit, redis.call)
end

-- A strict script's reply {allowed (0|1), remaining, retry_after_ms,
-- reset_after_ms}, decided at now: its waits are told from req, the time
-- the caller asked at (earlier when now was raised to the key's newest).
local function strict_reply(req, now, allowed, remaining, retry, reset)
  local shift = now - req
  if allowed == 0 then retry = retry + shift end
  return {allowed, remaining, retry, reset + shift}
end

-- Adds n entries at ms `at` to a sliding log (sorted set zkey, hash hkey
-- {s = last sequence number, t = newest admitted ms}), at most 500 a ZADD;
-- sets t to now and both keys' TTLs to two windows of w ms.
local function log_add(zkey, hkey, at, n, now, w)
  local seq = redis.call('HINCRBY', hkey, 's', n) - n
  local args = {}
  for i = 1, n do
    args[#args + 1] = int(at)
    args[#args + 1] = int(seq + i)
    if #args >= 1000 or i == n then
      redis.call('ZADD', zkey, unpack(args))
      args = {}
    end
  end
  redis.call('HSET', hkey, 't', int(now))
  redis.call('PEXPIRE', zkey, 2 * w)
  redis.call('PEXPIRE', hkey, 2 * w)
end

-- Operation fields (global/op.go): a call that must change a key at most
-- once names an op, a stream (a hash field: '~' and a few characters) and
-- its sequence number there, which only grows. The key's hash keeps in the
-- stream's field its last two ops applied, the latest first, each as
-- "seq:x", x = 8 * granted + 2 * (window index % 4) + allowed (for a
-- credit: applied, granted 0): "seq:x:seq:x". Every op of the stream that
-- the key applied is one of them or older than both, so an op between or
-- above them was never applied: two calls of a stream may race for a key
-- and both apply.
-- op_state(rec, seq) tells the op seq from the stream's field rec (nil:
-- none), and returns the ops recorded: 0, apply it; 1 and x, a copy of a
-- recorded op; 2, an op older than both recorded ones (stale), which may
-- have been applied or not.
local function op_state(rec, seq)
  local ops = {}
  if not rec then return 0, 0, ops end
  for s, x in string.gmatch(rec, '(%d+):(%d+)') do ops[#ops + 1] = {tonumber(s), tonumber(x)} end
  local low = ops[1][1]
  for _, o in ipairs(ops) do
    if o[1] == seq then return 1, o[2], ops end
    low = math.min(low, o[1])
  end
  if #ops >= 2 and seq < low then return 2, 0, ops end
  return 0, 0, ops
end

-- op_record returns the stream's field once op seq applied in window index
-- idx (x less the window bits): it, then the newest of the ops recorded.
local function op_record(ops, seq, idx, x)
  local rec = int(seq) .. ':' .. int(x + 2 * (idx % 4))
  local keep = ops[1]
  for _, o in ipairs(ops) do
    if o[1] > keep[1] then keep = o end
  end
  if keep then rec = rec .. ':' .. int(keep[1]) .. ':' .. int(keep[2]) end
  return rec
end

-- op_prune: a hash of more than 12 fields drops its op fields whose latest
-- op is older than the window before idx, the window of the op being
-- recorded (any op recorded in the key was of idx or an earlier window). A
-- late copy of a dropped op then applies again, to windows that no longer
-- count (a return, a credit) or that count it twice (an admission, a
-- grant): never fewer tokens than were admitted. Two bits of window tell
-- a live op (idx or idx-1) from an older one but for some older ones,
-- dropped a window or two later.
local function op_prune(key, idx)
  if redis.call('HLEN', key) <= 12 then return end
  local all = redis.call('HGETALL', key)
  local live1, live2 = idx % 4, (idx - 1) % 4
  local dead = {}
  for i = 1, #all, 2 do
    local f, rec = all[i], all[i + 1]
    if string.byte(f, 1) == 126 then -- '~'
      local win = fdiv(tonumber(string.match(rec, '^%d+:(%d+)')), 2) % 4
      if win ~= live1 and win ~= live2 then dead[#dead + 1] = f end
    end
  end
  if #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
end

-- hybrid_counts reads a hybrid key's counts of window idx from st, its
-- HMGET of 'w', 'c', 'p', 't', 'ac', 'ap', 'v' (lease.lua's layout): the
-- window's and the previous window's counts and attempts. A key missing
-- while its caller knew it (known_version kv > 0) in window idx or idx-1
-- was lost, not expired (every write sets a TTL of two windows): it starts
-- again from what the caller knew (kw, kp, kc), so that a data loss hands
-- no user a fresh budget; restored is 1 then. Returns prev, cur, ap, ac,
-- restored.
local function hybrid_counts(st, idx, kw, kp, kc, kv)
  local sidx, restored = tonumber(st[1]), 0
  local c, p, ac, ap = tonumber(st[2]) or 0, tonumber(st[3]) or 0, tonumber(st[5]) or 0, tonumber(st[6]) or 0
  if sidx == nil and kv > 0 then
    if kw == idx then
      sidx, c, p, ac, ap, restored = idx, kc, kp, 0, 0, 1
    elseif kw == idx - 1 then
      sidx, c, ac, restored = kw, kc, 0, 1
    end
  end
  if sidx == idx then
    return p, c, ap, ac, restored
  elseif sidx == idx - 1 then
    return c, 0, ac, 0, restored
  end
  return 0, 0, 0, 0, restored
end
