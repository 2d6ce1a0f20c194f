-- Claims a job for one run: the next attempt, with a lease that the runner renews.
-- KEYS[1]  job hash
-- ARGV     worker name, lease_ms, batch key template
-- Returns {'claimed', attempt, failures, HGETALL} | {'final', attempt, 0}
--         | {'busy', attempt, wait_ms}
--         | {'missing', 0, 0}
-- A live lease means another delivery of this job is running (a redelivered message):
-- the caller defers instead of running it twice. An expired lease on a running job
-- means its worker died: that attempt counts as failed ("worker lost").
--
-- `attempt` counts tries, not claims. A claim released for a rate-limit permit never
-- called the upstream, so it wrote nothing under its number (no chunk, error or final
-- state) and its lease is gone: the next claim takes that number again ('unused_attempt',
-- set by move_job.lua). Every other claim takes a new number, since the try before may
-- have written under its own (a lost worker may even still be writing), and fencing
-- (job_common.lua's `refused`) must keep refusing it. So the number never goes down, and
-- two tries that may have written never share one.
local job_key = KEYS[1]
local worker, lease_ms, batch_template = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local job = load_job(job_key)
if not job.status then
  return {'missing', 0, 0}
end
if FINAL[job.status] then
  return {'final', tonumber(job.attempt), 0}
end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_until = tonumber(redis.call('HGET', job_key, 'lease_until_ms') or '0')
if job.status == 'running' and lease_until > now_ms then
  return {'busy', tonumber(job.attempt), lease_until - now_ms}
end
-- A retry's backoff (or Retry-After) is kept even when the message comes back early.
local not_before = tonumber(redis.call('HGET', job_key, 'not_before_ms') or '0')
if job.status == 'retrying' and not_before > now_ms then
  return {'busy', tonumber(job.attempt), not_before - now_ms}
end

local errors = job.errors
if job.status == 'running' then
  local lost = cjson.encode('attempt ' .. job.attempt .. ': worker lost')
  errors = append_json(errors, lost)
  redis.call('HSET', job_key, 'errors', errors)
end
local attempt = tonumber(job.attempt) + 1
if job.status == 'queued' and redis.call('HGET', job_key, 'unused_attempt') == job.attempt then
  attempt = tonumber(job.attempt)
end
redis.call('HDEL', job_key, 'unused_attempt')
redis.call('HSET', job_key, 'status', 'running', 'attempt', attempt, 'worker', worker,
  'started_at', now_ms / 1000, 'lease_until_ms', now_ms + lease_ms)
if job.batch_id then
  move_count(fill(batch_template, job.batch_id), job.status, 'running')
end
local failures = 0
if errors and errors ~= '' and errors ~= '[]' then
  failures = #cjson.decode(errors)
end
return {'claimed', attempt, failures, redis.call('HGETALL', job_key)}
