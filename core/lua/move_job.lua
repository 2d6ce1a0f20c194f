-- Moves a job to a non-final status (queued: a release, running, retrying), fenced by
-- attempt.
-- KEYS[1]  job hash
-- ARGV     attempt, status, batch key template, error as a JSON string or '',
--          then field/value pairs to set
-- Returns 1 if the job moved, 0 if refused.
local job_key = KEYS[1]
local attempt, status, batch_template, error_item = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local job = load_job(job_key)

if refused(job, attempt) then
  return 0
end
-- A release (back to 'queued') gives the attempt's number back for the next claim
-- (claim_job.lua): only the attempt that holds the job may, once. A superseded one must
-- not, its number stays used.
if status == 'queued' then
  if job.status ~= 'running' or tonumber(attempt) ~= tonumber(job.attempt) then
    return 0
  end
  redis.call('HSET', job_key, 'unused_attempt', job.attempt)
end
-- A redelivered failure report must not count the same error twice.
if status == 'retrying' and job.status == status and attempt == job.attempt then
  return 0
end

write_job(job_key, job, status, attempt, error_item, 5)
if job.batch_id then
  move_count(fill(batch_template, job.batch_id), job.status, status)
end
return 1
