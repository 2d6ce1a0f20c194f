-- Appends entries to one or more job chunk streams, each stream's in order, in one call
-- (one command in the worker's shared pipeline, however many streams and entries).
-- Fenced per job: its entries go in only if their attempt is the job's current one, still
-- running under a live lease (Redis clock, as in claim_job.lua). A worker that was paused
-- or cut off past its lease may already have been replaced; what it streams then must not
-- reach the consumers, who read the stream as the job's current attempt.
-- KEYS[2i-1]   job hash i          KEYS[2i]  its chunk stream
-- ARGV[1]      n: fields per entry
-- ARGV[2..n+1] the field names
-- then, per job, the attempt its entries belong to and how many entries there are
-- then every entry's n values, job by job
-- Returns, per job, the new entries' ids, or 0 if refused (none of its entries written).
local width = tonumber(ARGV[1])
local jobs = #KEYS / 2
local at = width + 2 * jobs + 2
local fields = {}
for f = 1, width do
  fields[2 * f - 1] = ARGV[1 + f]
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function owns(job_key, attempt)
  local job = redis.call('HMGET', job_key, 'status', 'attempt', 'lease_until_ms')
  return job[1] == 'running' and job[2] == attempt and tonumber(job[3] or '0') > now_ms
end

local replies = {}
for i = 1, jobs do
  local attempt, count = ARGV[width + 2 * i], tonumber(ARGV[width + 2 * i + 1])
  if owns(KEYS[2 * i - 1], attempt) then
    local added = {}
    for _ = 1, count do
      for f = 1, width do
        fields[2 * f] = ARGV[at + f - 1]
      end
      added[#added + 1] = redis.call('XADD', KEYS[2 * i], '*', unpack(fields))
      at = at + width
    end
    replies[i] = added
  else
    replies[i] = 0
    at = at + count * width
  end
end
return replies
