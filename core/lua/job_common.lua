-- Helpers shared by the job scripts: worker/store.py puts this file in front
-- of each script before registering it.

local FINAL = {succeeded = true, failed = true, cancelled = true}

-- The fields every transition decides on, read in one call.
local function load_job(job_key)
  local f = redis.call('HMGET', job_key, 'status', 'attempt', 'batch_id', 'errors')
  return {status = f[1], attempt = f[2] or '0', batch_id = f[3], errors = f[4]}
end

-- Fencing: a missing or final job never changes again, and a report from an
-- attempt older than the recorded one is stale (a redelivered message).
local function refused(job, attempt)
  if not job.status or FINAL[job.status] then
    return true
  end
  return tonumber(attempt) < tonumber(job.attempt)
end

-- Key templates come from worker.keys with '{id}' where the id goes, so the
-- key layout is written down in one place only.
local function fill(template, id)
  local i, j = string.find(template, '{id}', 1, true)
  return string.sub(template, 1, i - 1) .. id .. string.sub(template, j + 1)
end

-- Append an item (already a JSON string) to a JSON list kept as text;
-- cjson cannot tell an empty list from an empty object, so no decoding.
local function append_json(list, item)
  if not list or list == '' or list == '[]' then
    return '[' .. item .. ']'
  end
  return string.sub(list, 1, -2) .. ',' .. item .. ']'
end

-- One job leaves one per-status counter of its batch for another.
local function move_count(batch_key, from, to)
  if from ~= to then
    redis.call('HINCRBY', batch_key, from, -1)
    redis.call('HINCRBY', batch_key, to, 1)
  end
end

-- Writes status and attempt, then the optional field/value pairs from
-- ARGV[first_pair] on, then appends the error item unless it is ''.
local function write_job(job_key, job, status, attempt, error_item, first_pair)
  redis.call('HSET', job_key, 'status', status, 'attempt', attempt)
  if #ARGV >= first_pair then
    redis.call('HSET', job_key, unpack(ARGV, first_pair))
  end
  if error_item ~= '' then
    redis.call('HSET', job_key, 'errors', append_json(job.errors, error_item))
  end
end

-- Closes a batch whose every job has ended and starts the retention clock of its keys
-- (templates: batch, batch jobs, batch events, batch invalid). Not while its producer
-- is still adding jobs ('sealed' is '0' from open_batch until seal_batch; a batch made
-- without open_batch has no such field and closes as soon as its jobs are done).
local function close_batch_if_done(batch_id, templates, now, ttl)
  local batch_key = fill(templates[1], batch_id)
  local b = redis.call('HMGET', batch_key, 'total', 'succeeded', 'failed', 'cancelled',
    'sealed')
  if b[5] == '0' then
    return
  end
  local done = (tonumber(b[2]) or 0) + (tonumber(b[3]) or 0) + (tonumber(b[4]) or 0)
  if done >= (tonumber(b[1]) or 0) then
    redis.call('HSET', batch_key, 'status', 'finished', 'finished_at', now)
    for _, template in ipairs(templates) do
      redis.call('EXPIRE', fill(template, batch_id), ttl)
    end
  end
end
