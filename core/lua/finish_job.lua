-- Writes a job's final state exactly once, fenced by attempt.
-- KEYS[1]  job hash        KEYS[2]  the job's chunk stream   KEYS[3]  open-jobs index
-- KEYS[4]  the job's vectors (an embeddings job's)
-- KEYS[5]  the feeder's lines in flight   KEYS[6]  their count by proxy
-- KEYS[7]  the prefix of the feeder's per-proxy caps (core/lua/feed_lines.lua)
-- ARGV     job id, attempt ('' = not fenced: a cancel), final status, now,
--          retention_s, batch / batch jobs / batch events / batch invalid key templates,
--          error as a JSON string or '', m, then m field/value items of a last entry for
--          the chunk stream (a stream's `done`: m = 0 for none), then k, then k pieces of
--          the vectors' bytes (k = 0 for none), then field/value pairs to set
-- Returns 1 if this call wrote the final state, 0 if refused.
local job_key, chunks_key = KEYS[1], KEYS[2]
local job_id, attempt, status, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local templates = {ARGV[6], ARGV[7], ARGV[8], ARGV[9]}
local entry_items = tonumber(ARGV[11])
local pieces_at = 12 + entry_items
local pieces = tonumber(ARGV[pieces_at])
local job = load_job(job_key)

if attempt == '' then
  attempt = job.attempt
end
if refused(job, attempt) then
  return 0
end

write_job(job_key, job, status, attempt, ARGV[10], pieces_at + pieces + 1)
redis.call('ZREM', KEYS[3], job_id)
-- A batch line the feeder gave to the broker leaves its window, and a proxy with a cap may
-- take one more line (core/lua/return_lines.lua).
if redis.call('ZREM', KEYS[5], job_id) == 1 then
  local proxy = redis.call('HGET', job_key, 'proxy')
  redis.call('HINCRBY', KEYS[6], proxy, -1)
  if redis.call('EXISTS', KEYS[7] .. proxy) == 1 then
    redis.call('INCR', KEYS[7] .. proxy)
  end
end
redis.call('HSET', job_key, 'finished_at', now)
redis.call('EXPIRE', job_key, ttl)
-- Raw bytes beside the record, whose readers decode every field as text; fields "0", "1", …
if pieces > 0 then
  local fields = {}
  for i = 1, pieces do
    fields[2 * i - 1] = tostring(i - 1)
    fields[2 * i] = ARGV[pieces_at + i]
  end
  redis.call('HSET', KEYS[4], unpack(fields))
  redis.call('EXPIRE', KEYS[4], ttl)
end
-- With the final state, so a consumer that reads `done` finds the job final.
if entry_items > 0 then
  redis.call('XADD', chunks_key, '*', unpack(ARGV, 12, 11 + entry_items))
end
redis.call('EXPIRE', chunks_key, ttl)
if not job.batch_id then
  return 1
end

move_count(fill(templates[1], job.batch_id), job.status, status)
redis.call('XADD', fill(templates[3], job.batch_id), '*',
  'job_id', job_id, 'status', status, 'attempt', attempt)

-- The last job to finish closes the batch and starts its retention clock.
close_batch_if_done(job.batch_id, templates, now, ttl)
return 1
