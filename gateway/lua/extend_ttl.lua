-- Makes KEYS[1] live at least ARGV[1] more seconds, never shortening it: an index must
-- outlive every entry it lists, whatever the order the entries were added in.
-- KEYS     the key
-- ARGV     seconds
local ttl = redis.call('TTL', KEYS[1])
if ttl >= tonumber(ARGV[1]) then
  return 0
end
return redis.call('EXPIRE', KEYS[1], ARGV[1])
