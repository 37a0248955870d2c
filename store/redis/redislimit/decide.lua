-- levee ratelimit: decide every demand of one request atomically, by the
-- Redis clock, charging all of them or none. The arithmetic mirrors
-- ratelimit/gcra.go, in integer microseconds (exact in Lua doubles).
--
-- KEYS[i]  state of demand i: a string "TAT:interval" (rate; a bare TAT
--          from older versions is read as well), or a
--          sorted set of in-flight decision ids scored by lease expiry
--          (concurrency), or a string "units:period_end" (calendar quota).
-- ARGV[1]  id of this decision, the member added to concurrency sets.
-- then 4 per demand:
--   kind   'r' (rate), 'c' (concurrency) or 'q' (calendar quota),
--          followed by 's' if shadow
--   a      rate: emission interval (µs)   concurrency: limit   quota: limit
--   b      rate: burst tolerance (µs)     concurrency: lease (µs)
--          quota: four period boundaries "b0:b1:b2:b3" (Unix µs), the
--          periods [b0,b1), [b1,b2), [b2,b3) around the caller's clock;
--          the one holding the Redis clock is used
--   cost   rate, quota: units (ignored for concurrency)
--
-- Returns {admitted, then per demand: allowed, remaining, retry_us, reset_us}.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local admit = 1
local kind, a, b, ok, newtat, remc, remk, resc, resk, retry = {}, {}, {}, {}, {}, {}, {}, {}, {}, {}
local qend, qused = {}, {}
for i = 1, n do
  local o = 1 + (i - 1) * 4
  local k = ARGV[o + 1]
  kind[i] = string.sub(k, 1, 1)
  a[i] = tonumber(ARGV[o + 2])
  b[i] = tonumber(ARGV[o + 3])
  if kind[i] == 'q' then
    local cost = tonumber(ARGV[o + 4])
    -- b0 (the previous period's start) is for the caller; the ends b1..b3
    -- are what the script needs.
    local bs = ARGV[o + 3]
    local p1 = string.find(bs, ':', 1, true)
    local p2 = string.find(bs, ':', p1 + 1, true)
    local p3 = string.find(bs, ':', p2 + 1, true)
    local e1 = tonumber(string.sub(bs, p1 + 1, p2 - 1))
    local e2 = tonumber(string.sub(bs, p2 + 1, p3 - 1))
    local e = tonumber(string.sub(bs, p3 + 1))
    if now < e1 then e = e1 elseif now < e2 then e = e2 end
    local raw, used = redis.call('GET', KEYS[i]), 0
    if raw then
      local sep = string.find(raw, ':', 1, true)
      local cnt, pend = nil, nil
      if sep then
        cnt = tonumber(string.sub(raw, 1, sep - 1))
        pend = tonumber(string.sub(raw, sep + 1))
      end
      if not cnt or not pend then return redis.error_reply('ERR levee ratelimit: corrupt state at ' .. KEYS[i]) end
      if pend == e then used = cnt end
    end
    qend[i], qused[i] = e, used + cost
    local left = e - now
    if left < 1 then left = 1 end
    resc[i], resk[i] = left, left
    if used + cost <= a[i] then
      ok[i], remc[i], remk[i], retry[i] = 1, a[i] - used - cost, a[i] - used, 0
    else
      ok[i], retry[i] = 0, left
      if used < a[i] then remk[i] = a[i] - used else remk[i] = 0 end
    end
  elseif kind[i] == 'r' then
    local cost = tonumber(ARGV[o + 4])
    local raw, tat, siv = redis.call('GET', KEYS[i]), 0, nil
    if raw then
      local sep = string.find(raw, ':', 1, true)
      if sep then
        tat = tonumber(string.sub(raw, 1, sep - 1))
        siv = tonumber(string.sub(raw, sep + 1))
        if not siv then return redis.error_reply('ERR levee ratelimit: corrupt state at ' .. KEYS[i]) end
      else
        tat = tonumber(raw)
      end
      if not tat then return redis.error_reply('ERR levee ratelimit: corrupt state at ' .. KEYS[i]) end
    end
    -- A policy whose rate changed (reload) keeps the units owed (rescale in gcra.go).
    if siv and siv > 0 and siv ~= a[i] and tat > now then
      tat = now + math.ceil((tat - now) / siv * a[i])
      -- Store the converted state whatever is decided, so the debt drains
      -- at the new rate from now on; this charges nothing.
      redis.call('SET', KEYS[i], string.format('%d:%d', tat, a[i]), 'PX', math.ceil((tat - now) / 1000))
    end
    if tat < now then tat = now end
    newtat[i] = tat + a[i] * cost
    resk[i] = tat - now
    local allow_at = newtat[i] - b[i]
    if allow_at <= now then
      ok[i] = 1
      remc[i] = math.floor((now - allow_at) / a[i])
      remk[i] = remc[i] + cost
      resc[i] = newtat[i] - now
      retry[i] = 0
    else
      ok[i] = 0
      retry[i] = allow_at - now
      local left = now + b[i] - tat
      if left > 0 then remk[i] = math.floor(left / a[i]) else remk[i] = 0 end
    end
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    local held = redis.call('ZCARD', KEYS[i])
    resc[i], resk[i] = 0, 0
    if held < a[i] then
      ok[i], remc[i], remk[i], retry[i] = 1, a[i] - held - 1, a[i] - held, 0
    else
      ok[i], remk[i], retry[i] = 0, 0, 0 -- the client sets ratelimit.ConcurrencyRetryAfter
    end
  end
  if ok[i] == 0 and string.len(k) == 1 then admit = 0 end
end
local out = {admit}
for i = 1, n do
  if admit == 1 and ok[i] == 1 then
    if kind[i] == 'q' then
      redis.call('SET', KEYS[i], string.format('%d:%d', qused[i], qend[i]), 'PX', math.ceil(resc[i] / 1000) + 1000)
    elseif kind[i] == 'r' then
      local ttl = newtat[i] - now
      if ttl > 0 then
        redis.call('SET', KEYS[i], string.format('%d:%d', newtat[i], a[i]), 'PX', math.ceil(ttl / 1000))
      end
    else
      redis.call('ZADD', KEYS[i], string.format('%d', now + b[i]), ARGV[1])
      redis.call('PEXPIRE', KEYS[i], math.ceil(b[i] / 1000))
    end
    out[#out + 1] = 1
    out[#out + 1] = remc[i]
    out[#out + 1] = 0
    out[#out + 1] = resc[i]
  else
    out[#out + 1] = ok[i]
    out[#out + 1] = remk[i]
    out[#out + 1] = retry[i]
    out[#out + 1] = resk[i]
  end
end
return out
