-- mpq distributed rate limiter for one proxy. One atomic call per operation; the clock is
-- Redis TIME, the one clock every worker shares (worker clocks may drift apart).
--
-- KEYS[1..5] GCRA buckets rpm, tpm, tps, tph, tpd: one "theoretical arrival time" in ms each
-- KEYS[6] leases: sorted set of lease ids scored by expiry (ms)
-- KEYS[7] cooldown: exists (with a PX expiry) while the proxy is cooling down after a 429
--
-- ARGV[1] is the mode:
--   acquire   ARGV: poll_ms, cost_tokens, lease_id, lease_ttl_ms, max_concurrency, then
--             interval_ms and burst of each bucket in KEYS order
--             (interval 0 / max_concurrency 0 = no limit)
--             -> {1, 0, ''} admitted, or {0, wait_ms, reason} and nothing recorded
--   release   ARGV: lease_id                       -> 1 if the lease was held, else 0
--   renew     ARGV: lease_id, lease_ttl_ms         -> 1 if the lease was held (now extended)
--   reconcile ARGV: delta_tokens, then interval_ms of each token bucket (tpm, tps, tph, tpd)
--             -> 1
--   cooldown  ARGV: cooldown_ms                    -> remaining cooldown in ms

if redis.replicate_commands then
  redis.replicate_commands()  -- needed before writes after TIME on Redis < 5; a no-op later
end

local BUCKET_NAMES = {'rpm', 'tpm', 'tps', 'tph', 'tpd'}
local LEASES, COOLDOWN = 6, 7

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

-- A TAT in the past means a full bucket; the past is not credit.
local function load_tat(key, now)
  local v = redis.call('GET', key)
  if v then
    return math.max(tonumber(v), now)
  end
  return now
end

local function store_tat(key, tat, now)
  if tat <= now then
    redis.call('DEL', key)  -- a full bucket needs no state
  else
    redis.call('SET', key, string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1)
  end
end

-- ms until `cost` units fit. The test caps the cost at the burst so that a request bigger
-- than the bucket is admitted once the bucket is full instead of never; the charge in
-- acquire() is the full cost, so the long-run rate still holds.
local function gcra_wait(tat, now, cost, interval, burst)
  local allow_at = tat + (math.min(cost, burst) - burst) * interval
  return math.max(0, allow_at - now)
end

-- ms until a lease slot frees up, or 0. Expired leases (killed workers) are reaped first.
local function semaphore_wait(key, now, max_concurrency, poll_ms)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) < max_concurrency then
    return 0
  end
  -- A release can come at any moment, so poll rather than wait for the earliest expiry.
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return math.min(tonumber(first[2]) - now, poll_ms)
end

-- The set lives as long as its longest lease.
local function expire_with_leases(key, now)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIRE', key, math.ceil(tonumber(last[2]) - now) + 1)
  end
end

local function add_lease(key, now, lease_id, ttl_ms)
  redis.call('ZADD', key, now + ttl_ms, lease_id)
  expire_with_leases(key, now)
end

-- Extend a lease still in the set. A released or reaped one is not brought back, so a
-- renewal racing a release cannot resurrect the slot. A lease past its expiry but not yet
-- reaped was not given to anyone (an acquire reaps before counting), so it may be kept.
local function renew_lease(key, now, lease_id, ttl_ms)
  if not redis.call('ZSCORE', key, lease_id) then
    return 0
  end
  redis.call('ZADD', key, now + ttl_ms, lease_id)
  expire_with_leases(key, now)
  return 1
end

local function acquire(now)
  local poll_ms = tonumber(ARGV[2])
  local cost = tonumber(ARGV[3])
  local max_concurrency = tonumber(ARGV[6])
  local wait, reason = 0, ''
  local cooldown_ms = redis.call('PTTL', KEYS[COOLDOWN])
  if cooldown_ms > 0 then
    wait, reason = cooldown_ms, 'cooldown'
  end
  local tats, costs = {}, {}
  for i = 1, #BUCKET_NAMES do
    local interval = tonumber(ARGV[5 + 2 * i])
    costs[i] = i == 1 and 1 or cost  -- rpm counts requests, the others tokens
    if interval > 0 then
      tats[i] = load_tat(KEYS[i], now)
      local w = gcra_wait(tats[i], now, costs[i], interval, tonumber(ARGV[6 + 2 * i]))
      if w > wait then
        wait, reason = w, BUCKET_NAMES[i]
      end
    end
  end
  if max_concurrency > 0 then
    local w = semaphore_wait(KEYS[LEASES], now, max_concurrency, poll_ms)
    if w > wait then
      wait, reason = w, 'concurrency'
    end
  end
  if wait > 0 then
    return {0, math.ceil(wait), reason}
  end
  for i = 1, #BUCKET_NAMES do
    if tats[i] then
      store_tat(KEYS[i], tats[i] + costs[i] * tonumber(ARGV[5 + 2 * i]), now)
    end
  end
  if max_concurrency > 0 then
    add_lease(KEYS[LEASES], now, ARGV[4], tonumber(ARGV[5]))
  end
  return {1, 0, ''}
end

-- Settle actual - estimated tokens. Giving tokens back never moves a TAT below now: an
-- idle bucket is already full.
local function reconcile(now)
  local delta = tonumber(ARGV[2])
  for i = 2, #BUCKET_NAMES do
    local interval = tonumber(ARGV[1 + i])
    if interval > 0 then
      local tat = load_tat(KEYS[i], now)
      store_tat(KEYS[i], math.max(now, tat + delta * interval), now)
    end
  end
  return 1
end

-- Start or extend the shared cool-down; a shorter one never cuts a longer one short.
local function cooldown(now)
  local ms = math.ceil(tonumber(ARGV[2]))
  local remaining_ms = redis.call('PTTL', KEYS[COOLDOWN])
  if ms > 0 and ms > remaining_ms then
    redis.call('SET', KEYS[COOLDOWN], string.format('%.0f', now + ms), 'PX', ms)
    return ms
  end
  return math.max(remaining_ms, 0)
end

local mode = ARGV[1]
local now = now_ms()
if mode == 'acquire' then
  return acquire(now)
elseif mode == 'release' then
  return redis.call('ZREM', KEYS[LEASES], ARGV[2])
elseif mode == 'renew' then
  return renew_lease(KEYS[LEASES], now, ARGV[2], tonumber(ARGV[3]))
elseif mode == 'reconcile' then
  return reconcile(now)
elseif mode == 'cooldown' then
  return cooldown(now)
end
return redis.error_reply('mpq limiter: unknown mode ' .. tostring(mode))
