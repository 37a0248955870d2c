-- Record the end of an attempt on a shared circuit breaker.
-- KEYS[1] the breaker's hash; ARGV: gen, probe (0/1), failure (0/1),
-- ignore (0/1), consecutive threshold (0: off), failure ratio (0: off),
-- min calls, window (us), cooldown (us), probes, key TTL (ms).
-- Returns {state, gen, remaining cooldown (us)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local k = KEYS[1]
local rgen, probe, failure, ignore = tonumber(ARGV[1]), ARGV[2] == '1', ARGV[3] == '1', ARGV[4] == '1'
local thr, ratio, minCalls = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local window, cooldown, probes = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local h = redis.call('HMGET', k, 'st', 'gen', 'until', 'po', 'pk', 'cf')
local st = tonumber(h[1]) or 0
local gen = tonumber(h[2]) or 1
local untl = tonumber(h[3]) or 0
local po = tonumber(h[4]) or 0
local pk = tonumber(h[5]) or 0
local cf = tonumber(h[6]) or 0

local function view()
  local rem = 0
  if st == 2 then rem = untl - now end
  return {st, gen, rem}
end

local function set(newst)
  redis.call('DEL', k)
  st, gen = newst, gen + 1
  if newst == 2 then
    untl = now + cooldown
    redis.call('HSET', k, 'st', st, 'gen', gen, 'until', untl)
  else
    redis.call('HSET', k, 'st', st, 'gen', gen)
  end
end

if rgen ~= gen then
  return view()
end
if st == 0 and not ignore then
  local width = math.max(math.floor(window / 10), 1)
  local cur = math.floor(now / width)
  local i = cur % 10
  local e = tonumber(redis.call('HGET', k, 'e' .. i)) or -1
  if e ~= cur then
    redis.call('HSET', k, 'e' .. i, cur, 'n' .. i, 0, 'f' .. i, 0)
  end
  redis.call('HINCRBY', k, 'n' .. i, 1)
  if failure then
    redis.call('HINCRBY', k, 'f' .. i, 1)
    cf = cf + 1
  else
    cf = 0
  end
  redis.call('HSET', k, 'cf', cf, 'gen', gen)
  local trip = thr > 0 and cf >= thr
  if not trip and ratio > 0 then
    local n, f = 0, 0
    for j = 0, 9 do
      local b = redis.call('HMGET', k, 'e' .. j, 'n' .. j, 'f' .. j)
      local be = tonumber(b[1])
      if be and be > cur - 10 then
        n = n + (tonumber(b[2]) or 0)
        f = f + (tonumber(b[3]) or 0)
      end
    end
    trip = n >= minCalls and f >= ratio * n
  end
  if trip then
    set(2)
  end
elseif st == 1 and probe then
  po = math.max(po - 1, 0)
  if ignore then
    redis.call('HSET', k, 'po', po)
  elseif failure then
    set(2)
  else
    pk = pk + 1
    if pk >= probes then
      set(0)
    else
      redis.call('HSET', k, 'po', po, 'pk', pk)
    end
  end
end
redis.call('PEXPIRE', k, ARGV[11])
return view()
