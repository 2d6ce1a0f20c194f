-- Appends entries to one or more job chunk streams, each stream's in order, in one call
-- (one command in the worker's shared pipeline, however many streams and entries).
-- KEYS[i]    chunk stream i
-- ARGV[1]    fields per entry (name and value count as two)
-- ARGV[1+i]  how many entries go to KEYS[i]
-- then every entry's fields, stream by stream
-- Returns, per stream, the new entries' ids.
local width = tonumber(ARGV[1])
local at = #KEYS + 2
local ids = {}
for i = 1, #KEYS do
  local added = {}
  for _ = 1, tonumber(ARGV[1 + i]) do
    added[#added + 1] = redis.call('XADD', KEYS[i], '*', unpack(ARGV, at, at + width - 1))
    at = at + width
  end
  ids[i] = added
end
return ids
