-- Appends entries to a job's chunk stream in order, in one call (one command in the
-- worker's shared pipeline, however many entries a flush carries).
-- KEYS[1]  chunk stream
-- ARGV     fields per entry (name and value count as two), then every entry's fields
-- Returns the new entries' ids.
local width = tonumber(ARGV[1])
local ids = {}
for first = 2, #ARGV, width do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', unpack(ARGV, first, first + width - 1))
end
return ids
