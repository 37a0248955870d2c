-- Pause an upstream for ARGV[1] ms from now, extending (never shortening)
-- a pause in force. KEYS[1] the pause key.
local cur = redis.call('PTTL', KEYS[1])
if cur < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 0
