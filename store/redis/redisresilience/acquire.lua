-- Admit or reject one attempt on a shared circuit breaker.
-- KEYS[1] the breaker's hash; ARGV: probes, key TTL (ms).
-- Returns {state, gen, remaining cooldown (us), admitted, probe}.
-- States: 0 closed, 1 half-open, 2 open. Time is the server's (TIME).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local k = KEYS[1]
local probes = tonumber(ARGV[1])
local h = redis.call('HMGET', k, 'st', 'gen', 'until', 'po', 'pk')
local st = tonumber(h[1]) or 0
local gen = tonumber(h[2]) or 1
local untl = tonumber(h[3]) or 0
local po = tonumber(h[4]) or 0
local pk = tonumber(h[5]) or 0
local dirty = false
if st == 2 and now >= untl then
  st, gen, po, pk = 1, gen + 1, 0, 0
  redis.call('HSET', k, 'st', 1, 'gen', gen, 'po', 0, 'pk', 0, 'cf', 0)
  dirty = true
end
local admitted, probe = 0, 0
if st == 0 then
  admitted = 1
elseif st == 1 and po < probes - pk then
  po = po + 1
  redis.call('HSET', k, 'po', po)
  admitted, probe, dirty = 1, 1, true
end
if dirty then
  redis.call('PEXPIRE', k, ARGV[2])
end
local rem = 0
if st == 2 then
  rem = untl - now
end
return {st, gen, rem, admitted, probe}
