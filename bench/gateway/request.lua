-- wrk script for bench/gateway/run.sh: every scenario sends the same
-- request, a small JSON POST with an Idempotency-Key header, so the
-- upstream, nginx and every levee variant see identical bytes.
--
--   wrk ... -s request.lua URL -- <mode> <tag>
--
-- mode unique: a new key per request: <tag>-<thread>-<counter> (a new
--              request each time, so an idempotent route claims, proxies
--              and stores every one of them)
-- mode replay: the key <tag> on every request (the run script sends it
--              once first, so every measured request is a replay)
-- done() prints one machine-readable line starting with LEVEEBENCH.

local threads = {}
local nthreads = 0

function setup(thread)
   nthreads = nthreads + 1
   thread:set("tid", nthreads)
   table.insert(threads, thread)
end

local body = '{"amount":1000,"currency":"eur","customer":"cus_0123456789","description":"levee bench"}'
local headers
local counter = 0
local mode, tag

function init(args)
   mode = args[1] or "unique"
   tag = args[2] or tostring(os.time())
   headers = {
      ["Host"] = wrk.host .. ":" .. wrk.port,
      ["Content-Type"] = "application/json",
      ["Idempotency-Key"] = tag,
   }
   if mode ~= "unique" and mode ~= "replay" then
      error("request.lua: mode must be unique or replay, not " .. tostring(mode))
   end
end

function request()
   if mode == "unique" then
      counter = counter + 1
      headers["Idempotency-Key"] = tag .. "-" .. tid .. "-" .. counter
   end
   return wrk.format("POST", wrk.path, headers, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "LEVEEBENCH requests=%d duration_us=%d bytes=%d err_connect=%d err_read=%d err_write=%d err_timeout=%d non2xx=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d\n",
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.timeout, e.status,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
