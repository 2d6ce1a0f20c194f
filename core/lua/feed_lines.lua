-- Moves batch lines from their pending lists towards the broker: as many as the live
-- workers' slots leave room for, a few per flow in turn, by stride scheduling. Each flow
-- (one batch's lines for one proxy) has a pass; the flow with the lowest pass goes next and
-- its pass grows by lines / the batch's priority, so equal batches alternate and a batch of
-- priority 3 gets three lines for each line of a batch of priority 1. A flow that joins (or
-- comes back after a pause) starts at the clock, the lowest pass of the flows that ran,
-- so idle time earns no credit.
-- KEYS     flows, clock, inflight, by_proxy, workers, slots, open jobs
-- ARGV     now_ms, max lines, lines per message, ahead (a fraction of the slots),
--          flows looked at, batch template, pending template ('{id}' and the proxy
--          appended), job template, pause key prefix, cap key prefix, published field
-- Returns  {batch id, proxy, priority, share, id…} per message to publish. The lines are in
--          `inflight` and `open jobs`, stamped as published, when this returns: if the
--          caller dies before it publishes, the orphan sweep sends them (worker/orphans.py).
local flows_key, clock_key, inflight_key, by_proxy_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local workers_key, slots_key, open_key = KEYS[5], KEYS[6], KEYS[7]
local now, max_lines = tonumber(ARGV[1]), tonumber(ARGV[2])
local per_message, ahead, looked_at = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local batch_template, pending_template, job_template = ARGV[6], ARGV[7], ARGV[8]
local pause_prefix, cap_prefix, published_field = ARGV[9], ARGV[10], ARGV[11]

-- The room: the slots of the worker processes registered and alive, and a little ahead.
local dead = redis.call('ZRANGEBYSCORE', workers_key, '-inf', now)
if #dead > 0 then
  redis.call('ZREM', workers_key, unpack(dead))
  redis.call('HDEL', slots_key, unpack(dead))
end
local live = redis.call('ZRANGE', workers_key, 0, -1)
if #live == 0 then
  return {}
end
local capacity = 0
for _, slots in ipairs(redis.call('HMGET', slots_key, unpack(live))) do
  capacity = capacity + (tonumber(slots) or 0)
end
local room = math.min(capacity + math.floor(capacity * ahead) -
  redis.call('ZCARD', inflight_key), max_lines)
if room <= 0 then
  return {}
end

local clock = tonumber(redis.call('GET', clock_key) or '0')
local listed = redis.call('ZRANGE', flows_key, 0, looked_at - 1, 'WITHSCORES')
local flows = {}
for i = 1, #listed, 2 do
  local member = listed[i]
  local sep = string.find(member, ':', 1, true)
  local batch_id = string.sub(member, 1, sep - 1)
  flows[#flows + 1] = {member = member, batch = batch_id, proxy = string.sub(member, sep + 1),
    pass = math.max(tonumber(listed[i + 1]), clock),
    pending = fill(pending_template, batch_id) .. string.sub(member, sep + 1)}
end

-- A proxy paused (no permits) takes nothing; one that ran out of permits with n lines in
-- flight takes up to n again (its `cap`); any other takes what the room allows.
local proxy_room = {}
local function room_of(proxy)
  if proxy_room[proxy] == nil then
    if redis.call('EXISTS', pause_prefix .. proxy) == 1 then
      proxy_room[proxy] = 0
    else
      local cap = redis.call('GET', cap_prefix .. proxy)
      proxy_room[proxy] = cap and
        tonumber(cap) - tonumber(redis.call('HGET', by_proxy_key, proxy) or '0') or room
    end
  end
  return proxy_room[proxy]
end

local weights = {}
local function weight_of(batch_id)
  if weights[batch_id] == nil then
    local priority = redis.call('HGET', fill(batch_template, batch_id), 'priority')
    weights[batch_id] = math.max(tonumber(priority or '1') or 1, 1)
  end
  return weights[batch_id]
end

-- Each batch's share of the slots now: its priority over those of the batches looked at.
local total_weight = 0
local counted = {}
for _, flow in ipairs(flows) do
  flow.paused = room_of(flow.proxy) <= 0
  if not counted[flow.batch] then
    counted[flow.batch] = true
    total_weight = total_weight + weight_of(flow.batch)
  end
end

local messages = {}
while room > 0 do
  local best = nil
  for _, flow in ipairs(flows) do
    if not flow.done and (best == nil or flow.pass < best.pass) then
      if room_of(flow.proxy) > 0 then
        best = flow
      else
        flow.done = true
      end
    end
  end
  if best == nil then
    break
  end
  local take = math.min(per_message, room, room_of(best.proxy))
  local popped = redis.call('LPOP', best.pending, take) or {}
  local ids = {}
  local stamps = {}
  -- A line cancelled on its own while pending is final already: it is dropped here.
  for _, job_id in ipairs(popped) do
    local job_key = fill(job_template, job_id)
    local status = redis.call('HGET', job_key, 'status')
    if status and not FINAL[status] then
      ids[#ids + 1] = job_id
      stamps[#stamps + 1] = now
      stamps[#stamps + 1] = job_id
      redis.call('HSET', job_key, published_field, now)
    end
  end
  if #popped < take then
    best.done = true
  end
  local weight = weight_of(best.batch)
  best.pass = best.pass + math.max(#popped, 1) / weight
  if #ids > 0 then
    redis.call('ZADD', inflight_key, unpack(stamps))
    redis.call('ZADD', open_key, unpack(stamps))
    redis.call('HINCRBY', by_proxy_key, best.proxy, #ids)
    messages[#messages + 1] = {best.batch, best.proxy, tostring(weight),
      string.format('%.3f', weight / total_weight), unpack(ids)}
    room = room - #ids
    proxy_room[best.proxy] = proxy_room[best.proxy] - #ids
  end
end

-- Passes written back; a flow whose list is empty leaves (a new line brings it back). The
-- clock follows the flows that could run: a paused one is brought up to it when it may
-- run again.
local lowest = nil
for _, flow in ipairs(flows) do
  if redis.call('EXISTS', flow.pending) == 0 then
    redis.call('ZREM', flows_key, flow.member)
  else
    redis.call('ZADD', flows_key, flow.pass, flow.member)
    if not flow.paused and (lowest == nil or flow.pass < lowest) then
      lowest = flow.pass
    end
  end
end
if lowest and lowest > clock then
  redis.call('SET', clock_key, lowest)
end
return messages
