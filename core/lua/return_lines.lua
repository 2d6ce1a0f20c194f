-- Gives batch lines back to the front of their pending lists: their attempt found no
-- rate-limit permit (released, so 'queued' again). Their proxy is paused for the wait, and
-- its `cap` becomes the lines it still has in flight, so the feeder does not hand it more
-- than its limits let run (core/lua/feed_lines.lua); every line of the proxy that ends
-- raises the cap by one (finish_job.lua), so a proxy whose limits ease gets its room back
-- as fast as its lines end. Lines that moved on meanwhile (a cancel, another delivery) are
-- left as they are.
-- KEYS     flows, inflight, by_proxy, open jobs
-- ARGV     pause_ms, cap_ttl_ms, job template, pending template ('{id}', then the proxy),
--          pause key prefix, cap key prefix, then the job ids, in input order
-- Returns  how many lines went back.
local flows_key, inflight_key, by_proxy_key, open_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local pause_ms, cap_ttl_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local job_template, pending_template = ARGV[3], ARGV[4]
local pause_prefix, cap_prefix = ARGV[5], ARGV[6]
local returned = 0
-- Last first: each goes to the front, so they keep their order.
for i = #ARGV, 7, -1 do
  local job_id = ARGV[i]
  local job = redis.call('HMGET', fill(job_template, job_id), 'status', 'batch_id', 'proxy')
  if job[1] == 'queued' and job[2] and redis.call('ZREM', inflight_key, job_id) == 1 then
    local proxy = job[3]
    local left = redis.call('HINCRBY', by_proxy_key, proxy, -1)
    redis.call('LPUSH', fill(pending_template, job[2]) .. proxy, job_id)
    redis.call('ZREM', open_key, job_id)
    redis.call('ZADD', flows_key, 'NX', 0, job[2] .. ':' .. proxy)
    redis.call('SET', pause_prefix .. proxy, '1', 'PX', math.max(pause_ms, 1))
    redis.call('SET', cap_prefix .. proxy, math.max(left, 1), 'PX', cap_ttl_ms)
    returned = returned + 1
  end
end
return returned
