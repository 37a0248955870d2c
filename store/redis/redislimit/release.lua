-- levee ratelimit: give back the concurrency slots of one decision.
-- KEYS: the concurrency sets the decision joined. ARGV[1]: its id.
for i = 1, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
return 1
