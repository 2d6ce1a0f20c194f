-- Extends the lease of a running attempt; tells the runner to stop when the job was
-- cancelled or another attempt took over.
-- KEYS[1]  job hash
-- ARGV     attempt, lease_ms
-- Returns 1 (renewed) or 0 (stop: final, superseded or gone).
local job_key = KEYS[1]
local attempt, lease_ms = ARGV[1], tonumber(ARGV[2])
local f = redis.call('HMGET', job_key, 'status', 'attempt')
if f[1] ~= 'running' or f[2] ~= attempt then
  return 0
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', job_key, 'lease_until_ms', now_ms + lease_ms)
return 1
