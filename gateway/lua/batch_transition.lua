-- Moves a gateway batch on only from a status it is expected in: two gateway processes (a
-- cancel and a finalizer, say) may act on one batch at once, and the first to move it wins.
-- KEYS[1]  the batch hash
-- ARGV     n, then n statuses the batch may be in, then field / value pairs to set
-- Returns 1 if the fields were set, 0 if the batch is gone or in another status.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return 0
end
local n = tonumber(ARGV[1])
for i = 2, n + 1 do
  if ARGV[i] == status then
    if #ARGV > n + 1 then
      redis.call('HSET', KEYS[1], unpack(ARGV, n + 2))
    end
    return 1
  end
end
return 0
