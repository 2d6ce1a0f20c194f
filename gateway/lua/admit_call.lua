-- Takes a slot for one direct call unless all are taken, in one round trip: slots older than
-- the longest call (left by a gateway that went away) are dropped first. Atomic, so two calls
-- racing for the last slot cannot both get it. Scores are Redis time, shared by every gateway.
-- KEYS[1]  the sorted set of slots (member: slot id, score: start time in ms)
-- ARGV     slot id, the most slots held at once, ms after which a slot is stale
-- Returns the number of slots held before this call: it got its slot if that is below the most.
local max_slots, stale_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - stale_ms)
local held = redis.call('ZCARD', KEYS[1])
if held < max_slots then
  redis.call('ZADD', KEYS[1], now_ms, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], stale_ms + 1000)
end
return held
