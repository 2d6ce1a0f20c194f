-- The producer has added every job of a batch: it closes now if they have all ended,
-- else when its last job ends (finish_job.lua).
-- KEYS[1]  batch hash
-- ARGV     batch id, now, retention_s, batch / batch jobs / batch events / batch invalid
--          key templates
-- Returns 1, or 0 if there is no such batch.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'sealed', '1')
close_batch_if_done(ARGV[1], {ARGV[4], ARGV[5], ARGV[6], ARGV[7]}, ARGV[2], ARGV[3])
return 1
