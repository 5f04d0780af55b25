"""The Lua scripts behind the Redis queue, one per operation.

Every change that touches more than one key runs as one script, so that a
worker dying between two commands, or two workers interleaving, can never
leave a job in two places or in none, nor a counter off by one.

Every script gets the same seven KEYS (``jobs``, ``bodies``, ``pairs``,
``domains``, ``leased``, ``depth``, ``inflight``) and, as ARGV[1], the prefix
of the per-destination ``due`` sorted sets: those keys depend on the job, so a
script builds them itself. That is fine on a single Redis server (and on a
replicated one), not on Redis Cluster, where every key must be declared.

Times are epoch seconds (floats). "Now" is the Redis server's clock (TIME),
read once per script: every process then agrees on when a lease expires and
on whose turn it is, whatever its own clock says. Due times come from the
callers (``Job.due_at``, a retry's ``due_at``), as in the embedded queue.
"""

from __future__ import annotations

_COMMON = r"""
local JOBS, BODIES, PAIRS, DOMAINS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local LEASED, DEPTH, INFLIGHT = KEYS[5], KEYS[6], KEYS[7]
local DUE = ARGV[1]

-- The server's clock, in epoch seconds, read as text so that it is the very number
-- Redis makes of score(now).
local function clock()
  local t = redis.call('TIME')
  return tonumber(string.format('%d.%06d', t[1], t[2]))
end

-- A score as text, exact to the microsecond (Lua's own tostring keeps 14 digits).
local function score(value)
  return string.format('%.6f', value)
end

local function optional(value, format)
  if value == nil or value == cjson.null then return 'null' end
  return format(value)
end

local function time(value)
  return optional(value, score)
end

-- Written by hand because cjson.encode rounds numbers to 14 significant digits
-- (a tenth of a millisecond for an epoch time) and turns an empty array into {}.
local function encode(job)
  local ids = {}
  for i, id in ipairs(job.recipient_ids) do ids[i] = cjson.encode(id) end
  return table.concat({
    '{"email_id":', cjson.encode(job.email_id),
    ',"destination":', cjson.encode(job.destination),
    ',"recipient_ids":[', table.concat(ids, ','), ']',
    ',"body_ref":', cjson.encode(job.body_ref),
    ',"attempt":', string.format('%d', job.attempt),
    ',"due_at":', time(job.due_at),
    ',"lease_owner":', optional(job.lease_owner, cjson.encode),
    ',"lease_until":', time(job.lease_until),
    ',"created_at":', time(job.created_at),
    '}'})
end

-- Counters never go below zero, and a destination at zero disappears.
local function decrement(counter, destination)
  if redis.call('HINCRBY', counter, destination, -1) <= 0 then
    redis.call('HDEL', counter, destination)
  end
end

-- The job, if `owner` holds its lease; nil otherwise (finished, or lost to another).
local function owned(id, owner)
  local raw = redis.call('HGET', JOBS, id)
  if not raw then return nil end
  local job = cjson.decode(raw)
  if job.lease_owner ~= owner then return nil end
  return job
end

-- Drop the lease and make the job pending again, due at `due`. The destination's turn
-- comes by then at the latest (LT: an earlier turn is kept).
local function unlease(id, job, due)
  job.lease_owner = nil
  job.lease_until = nil
  if redis.call('ZREM', LEASED, id) == 1 then decrement(INFLIGHT, job.destination) end
  redis.call('HSET', JOBS, id, encode(job))
  redis.call('ZADD', DUE .. job.destination, score(due), id)
  redis.call('ZADD', DOMAINS, 'LT', score(due), job.destination)
end

-- Make up to `most` leases that ended before `now` pending again, due at once
-- (their own due time, already past, so they keep their place); return how many.
local function recover(now, most)
  local ids = redis.call('ZRANGEBYSCORE', LEASED, '-inf', '(' .. score(now), 'LIMIT', 0, most)
  for _, id in ipairs(ids) do
    local raw = redis.call('HGET', JOBS, id)
    if raw then
      local job = cjson.decode(raw)
      unlease(id, job, math.min(job.due_at, now))
    else
      redis.call('ZREM', LEASED, id)
    end
  end
  return #ids
end
"""

#: ARGV: due prefix, then per job: id, "email_id|destination", destination, body_ref,
#: due (epoch), JSON (created_at is set here). A job whose pair already has one is
#: skipped, and so is a job id already known.
ENQUEUE = (
    _COMMON
    + r"""
local now = clock()
local added = 0
for i = 2, #ARGV, 6 do
  local id, pair, destination = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local body, due = ARGV[i + 3], ARGV[i + 4]
  if redis.call('HEXISTS', JOBS, id) == 0 and redis.call('HSETNX', PAIRS, pair, id) == 1 then
    local job = cjson.decode(ARGV[i + 5])
    job.created_at = now
    redis.call('HSET', JOBS, id, encode(job))
    redis.call('HSET', BODIES, id, body)
    redis.call('ZADD', DUE .. destination, due, id)
    redis.call('ZADD', DOMAINS, 'LT', due, destination)
    redis.call('HINCRBY', DEPTH, destination, 1)
    added = added + 1
  end
end
return added
"""
)

#: ARGV: due prefix, owner, lease seconds, limit, most expired leases to recover first,
#: then the held back destinations. Returns a flat array: id, JSON, id, JSON...
#:
#: Fair across destinations: ``domains`` holds each destination with pending jobs, scored
#: by its turn: the due time of its earliest job or, if later, when it was last served.
#: Due destinations (score <= now) are taken lowest score first, one job each, round after
#: round; a destination served is scored just below now (a microsecond apart per job, to
#: keep this call's order), behind every destination waiting longer. So the one served
#: least recently goes first, in this call and the next: a destination with 100k due jobs
#: gets one turn per round like one with ten, even at limit=1. Turns stay at or below the
#: server's clock, so a destination with jobs due is due for every caller. A held back
#: destination (its breaker is open for the caller) gets one job in a call that serves
#: another destination too, not one per round: the rounds are the others' (``Queue.lease``).
LEASE = (
    _COMMON
    + r"""
local owner, limit = ARGV[2], tonumber(ARGV[4])
local now = clock()
local lease_until = now + tonumber(ARGV[3])
recover(now, tonumber(ARGV[5]))

local taken, count = {}, 0
local held, others = {}, 0
for i = 6, #ARGV do held[ARGV[i]] = false end

-- Lease the earliest job of `destination` if it is due and send the destination to the
-- back of the line; true if it has another job due now.
local function serve(destination)
  local due = DUE .. destination
  while true do
    local head = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
    if #head == 0 then
      redis.call('ZREM', DOMAINS, destination)
      return false
    end
    if tonumber(head[2]) > now then
      redis.call('ZADD', DOMAINS, head[2], destination)
      return false
    end
    local id = head[1]
    redis.call('ZREM', due, id)
    local raw = redis.call('HGET', JOBS, id)
    if raw then
      local job = cjson.decode(raw)
      job.lease_owner = owner
      job.lease_until = lease_until
      local encoded = encode(job)
      redis.call('HSET', JOBS, id, encoded)
      redis.call('ZADD', LEASED, score(lease_until), id)
      redis.call('HINCRBY', INFLIGHT, destination, 1)
      count = count + 1
      if held[destination] == nil then others = others + 1 else held[destination] = true end
      taken[#taken + 1] = id
      taken[#taken + 1] = encoded
      local after = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
      if #after == 0 then
        redis.call('ZREM', DOMAINS, destination)
        return false
      end
      local next_due = tonumber(after[2])
      local turn = now - (limit + 1 - count) * 0.000001
      redis.call('ZADD', DOMAINS, score(math.max(next_due, turn)), destination)
      return next_due <= now
    end
  end
end

-- The first due destinations in turn order, round after round until each has nothing
-- due or the limit is reached; then, if some had nothing after all, the next ones.
while count < limit do
  local ready = redis.call('ZRANGEBYSCORE', DOMAINS, '-inf', score(now), 'LIMIT', 0, limit - count)
  local before = count
  while count < limit and #ready > 0 do
    local still = {}
    for _, destination in ipairs(ready) do
      if count >= limit then break end
      -- A held back destination served already waits while others are served.
      if not (held[destination] and others > 0) and serve(destination) then
        still[#still + 1] = destination
      end
    end
    ready = still
  end
  if count == before then break end
end
return taken
"""
)

#: ARGV: due prefix, id, owner, lease seconds. Returns the new lease end (epoch, as
#: text), or false if the lease is not the owner's any more.
EXTEND = (
    _COMMON
    + r"""
local id = ARGV[2]
local job = owned(id, ARGV[3])
if not job then return false end
job.lease_until = clock() + tonumber(ARGV[4])
redis.call('HSET', JOBS, id, encode(job))
redis.call('ZADD', LEASED, score(job.lease_until), id)
return score(job.lease_until)
"""
)

#: ARGV: due prefix, id, owner. Returns 1 if the job was removed, 0 (nothing changed)
#: if the lease is not the owner's any more.
ACK = (
    _COMMON
    + r"""
local id = ARGV[2]
local job = owned(id, ARGV[3])
if not job then return 0 end
redis.call('HDEL', JOBS, id)
redis.call('HDEL', BODIES, id)
local pair = job.email_id .. '|' .. job.destination
if redis.call('HGET', PAIRS, pair) == id then redis.call('HDEL', PAIRS, pair) end
if redis.call('ZREM', LEASED, id) == 1 then decrement(INFLIGHT, job.destination) end
decrement(DEPTH, job.destination)
return 1
"""
)

#: ARGV: due prefix, id, owner, due (epoch), recipient ids as a JSON array. Returns 1,
#: or 0 (nothing changed) if the lease is not the owner's any more.
RETRY = (
    _COMMON
    + r"""
local id = ARGV[2]
local job = owned(id, ARGV[3])
if not job then return 0 end
job.attempt = job.attempt + 1
job.recipient_ids = cjson.decode(ARGV[5])
job.due_at = tonumber(ARGV[4])
unlease(id, job, job.due_at)
return 1
"""
)

#: ARGV: due prefix, id, owner. Pending again at once, attempt unchanged. Returns 1,
#: or 0 (nothing changed) if the lease is not the owner's any more.
RELEASE = (
    _COMMON
    + r"""
local id = ARGV[2]
local job = owned(id, ARGV[3])
if not job then return 0 end
unlease(id, job, math.min(job.due_at, clock()))
return 1
"""
)

#: ARGV: due prefix, email id, then destinations. Removes the email's job of each
#: destination unless it is under a live lease (its worker acks it); returns how many.
#: The destination's turn in ``domains`` and a ``parked:{d}`` entry may stay behind:
#: a lease drops a destination with no job due, and a release skips a job that is gone.
DISCARD = (
    _COMMON
    + r"""
local email_id = ARGV[2]
local now = clock()
local removed = 0
for i = 3, #ARGV do
  local destination = ARGV[i]
  local pair = email_id .. '|' .. destination
  local id = redis.call('HGET', PAIRS, pair)
  if id then
    local raw = redis.call('HGET', JOBS, id)
    local job = raw and cjson.decode(raw)
    local leased = job and job.lease_owner ~= nil and job.lease_owner ~= cjson.null
      and job.lease_until ~= nil and job.lease_until ~= cjson.null and job.lease_until >= now
    if not leased then
      redis.call('HDEL', PAIRS, pair)
      if job then
        redis.call('HDEL', JOBS, id)
        redis.call('HDEL', BODIES, id)
        redis.call('ZREM', DUE .. destination, id)
        if redis.call('ZREM', LEASED, id) == 1 then decrement(INFLIGHT, destination) end
        decrement(DEPTH, destination)
        removed = removed + 1
      end
    end
  end
end
return removed
"""
)

#: ARGV: due prefix, heartbeat key prefix. Returns how many leases were made pending:
#: those that ended (as ``RECOVER``, all of them) and those whose owner has no heartbeat
#: key any more, whatever their lease says.
#:
#: Reads every leased job: leases are bounded by the workers' concurrency (hundreds,
#: a few thousand at most), and this runs once per worker per heartbeat. Each owner's
#: key is looked up once.
RECOVER_ABANDONED = (
    _COMMON
    + r"""
local now = clock()
local freed = 0
repeat
  local batch = recover(now, 500)
  freed = freed + batch
until batch < 500
local alive = {}
for _, id in ipairs(redis.call('ZRANGE', LEASED, 0, -1)) do
  local raw = redis.call('HGET', JOBS, id)
  if raw then
    local job = cjson.decode(raw)
    local owner = job.lease_owner
    if owner ~= nil and owner ~= cjson.null then
      if alive[owner] == nil then
        alive[owner] = redis.call('EXISTS', ARGV[2] .. owner) == 1
      end
      if not alive[owner] then
        unlease(id, job, math.min(job.due_at, now))
        freed = freed + 1
      end
    end
  else
    redis.call('ZREM', LEASED, id)
  end
end
return freed
"""
)

#: KEYS: the bucket's hash. ARGV: rate (tokens per second), burst, count (tokens to take,
#: 1 to burst). Returns {1, tokens left} when they were taken, {0, tokens available} when
#: there were fewer.
#:
#: Not built on ``_COMMON``: a bucket is one key of its own, declared, and has nothing to
#: do with the jobs. The hash holds ``tokens`` as of ``ts`` (the server's clock, epoch
#: seconds); a refusal writes nothing. The key expires when the bucket would be full
#: again, so idle buckets vanish, and a bucket that does not exist is a full one.
BUCKET_TAKE = r"""
local rate, burst, count = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3] or '1')
local t = redis.call('TIME')
local now = tonumber(string.format('%d.%06d', t[1], t[2]))
local function fixed(value) return string.format('%.6f', value) end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil or ts == nil then tokens, ts = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
if tokens < count then return {0, fixed(tokens)} end
tokens = tokens - count
redis.call('HSET', KEYS[1], 'tokens', fixed(tokens), 'ts', fixed(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {1, fixed(tokens)}
"""

#: ARGV: due prefix, id, owner, wake (epoch), parked prefix. Pending again, due at
#: `wake`, attempt and recipients unchanged; noted in ``parked:{d}`` (scored by `wake`),
#: whose entries already due are dropped: nothing is left to release of those.
#: Returns 1, or 0 (nothing changed) if the lease is not the owner's any more.
PARK = (
    _COMMON
    + r"""
local id, wake, PARKED = ARGV[2], tonumber(ARGV[4]), ARGV[5]
local job = owned(id, ARGV[3])
if not job then return 0 end
job.due_at = wake
unlease(id, job, wake)
local parked = PARKED .. job.destination
redis.call('ZREMRANGEBYSCORE', parked, '-inf', score(clock()))
redis.call('ZADD', parked, score(wake), id)
return 1
"""
)

#: ARGV: due prefix, destination, parked prefix. Every job parked for the destination
#: that still waits for the time its park gave it (not leased, due then, in the future)
#: is due now. Returns how many.
RELEASE_PARKED = (
    _COMMON
    + r"""
local destination, PARKED = ARGV[2], ARGV[3]
local parked = PARKED .. destination
local now = clock()
local entries = redis.call('ZRANGEBYSCORE', parked, '(' .. score(now), '+inf', 'WITHSCORES')
local released = 0
for i = 1, #entries, 2 do
  local id, wake = entries[i], entries[i + 1]
  local raw = redis.call('HGET', JOBS, id)
  if raw then
    local job = cjson.decode(raw)
    local free = job.lease_owner == nil or job.lease_owner == cjson.null
    if free and score(job.due_at) == score(tonumber(wake)) then
      job.due_at = now
      redis.call('HSET', JOBS, id, encode(job))
      redis.call('ZADD', DUE .. destination, score(now), id)
      redis.call('ZADD', DOMAINS, 'LT', score(now), destination)
      released = released + 1
    end
  end
end
redis.call('DEL', parked)
return released
"""
)
