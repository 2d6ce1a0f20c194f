-- Cancels up to `limit` lines of one batch that the feeder has not given to the broker:
-- they end here, as finish_job.lua ends a job that is cancelled (no attempt ran, so there
-- are no chunks or vectors to keep), with one event each; the batch closes when its last
-- job has ended. No attempt of theirs runs, so the cancels counter that running attempts
-- watch is left alone.
-- KEYS     flows
-- ARGV     batch id, now, retention_s, limit, batch / batch jobs / batch events / batch
--          invalid templates, pending template ('{id}', then the proxy), job template
-- Returns  {lines cancelled, 1 if the batch has pending lines left else 0}
local flows_key = KEYS[1]
local batch_id, now, ttl, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local templates = {ARGV[5], ARGV[6], ARGV[7], ARGV[8]}
local pending_template, job_template = ARGV[9], ARGV[10]
local batch_key = fill(templates[1], batch_id)
local events_key = fill(templates[3], batch_id)
local prefix = batch_id .. ':'
local cancelled, left = 0, 0

for _, member in ipairs(redis.call('ZRANGE', flows_key, 0, -1)) do
  if string.sub(member, 1, #prefix) == prefix then
    local pending = fill(pending_template, batch_id) .. string.sub(member, #prefix + 1)
    local ids = {}
    if cancelled < limit then
      ids = redis.call('LPOP', pending, limit - cancelled) or {}
    end
    for _, job_id in ipairs(ids) do
      local job_key = fill(job_template, job_id)
      local job = load_job(job_key)
      if job.status and not FINAL[job.status] then
        write_job(job_key, job, 'cancelled', job.attempt, '', #ARGV + 1)
        redis.call('HSET', job_key, 'finished_at', now)
        redis.call('EXPIRE', job_key, ttl)
        move_count(batch_key, job.status, 'cancelled')
        redis.call('XADD', events_key, '*', 'job_id', job_id, 'status', 'cancelled',
          'attempt', job.attempt)
        cancelled = cancelled + 1
      end
    end
    if redis.call('EXISTS', pending) == 0 then
      redis.call('ZREM', flows_key, member)
    else
      left = 1
    end
  end
end
close_batch_if_done(batch_id, templates, now, ttl)
return {cancelled, left}
