-- Appends entries to one or more job chunk streams, each stream's in order, in one call
-- (one command in the worker's shared pipeline, however many streams and entries).
-- KEYS[i]      chunk stream i
-- ARGV[1]      n: fields per entry
-- ARGV[2..n+1] the field names
-- then, per stream, how many entries go to KEYS[i]
-- then every entry's n values, stream by stream
-- Returns, per stream, the new entries' ids.
local width = tonumber(ARGV[1])
local at = width + #KEYS + 2
local fields = {}
for f = 1, width do
  fields[2 * f - 1] = ARGV[1 + f]
end
local ids = {}
for i = 1, #KEYS do
  local added = {}
  for _ = 1, tonumber(ARGV[1 + width + i]) do
    for f = 1, width do
      fields[2 * f] = ARGV[at + f - 1]
    end
    added[#added + 1] = redis.call('XADD', KEYS[i], '*', unpack(fields))
    at = at + width
  end
  ids[i] = added
end
return ids
