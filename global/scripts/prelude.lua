-- Prelude: the helpers the scripts of this directory share. Go prepends it
-- to each of them (global/scripts.go), so that every helper exists once.
local function fdiv(x, y) -- floor(x / y) for integers, exact past 2^31
  local q = math.floor(x / y)
  if q * y > x then q = q - 1 elseif (q + 1) * y <= x then q = q + 1 end
  return q
end
local function int(x) return string.format('%.0f', x) end -- exact decimal, never 1e+15

-- The server's clock (TIME) in microseconds: below 2^53, so exact.
local function server_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- A strict script's ARGV: now_ms, window_ms, limit, n, use_server_time
-- ("1": now is the server's clock instead). Returns now, w, limit, n.
local function strict_args()
  local now = tonumber(ARGV[1])
  if ARGV[5] == '1' then now = fdiv(server_us(), 1000) end
  return now, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
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
