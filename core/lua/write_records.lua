-- Writes new job hashes in one call: a round of 1,000 costs the client one command and one
-- reply instead of 1,000 of each (the pipeline's MULTI reads a reply per command).
-- KEYS     the job hashes
-- ARGV     for each key in turn: n, then its n field/value pairs
-- Returns  how many were written.
local at = 1
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[at])
  redis.call('HSET', key, unpack(ARGV, at + 1, at + 2 * n))
  at = at + 2 * n + 1
end
return #KEYS
