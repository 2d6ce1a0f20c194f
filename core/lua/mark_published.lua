-- Stamps when the jobs' newest message was published (core/store.py PUBLISHED_MS).
-- KEYS     job hashes
-- ARGV     field name, time in ms
-- Only records that exist: one gone since the caller read it is not recreated (it would
-- never expire).
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, ARGV[1], ARGV[2])
  end
end
return 0
