--[[ acquire.lua: take `cost` units from one bucket's exact rolling window.

The bucket is a log of grant times, one list element per unit, oldest first. A call is
admitted when the units granted in the last `window` milliseconds plus `cost` fit under
the limit, so in every interval of one window's length at most `limit` units are granted.
Time comes from Redis TIME: workers' clocks may disagree, Redis has one clock.

KEYS[1]  the bucket's state: a list of grant times in Redis milliseconds. It expires one
         window after the last grant, so an idle bucket costs no memory.
KEYS[2]  optional: a per-user limit override. When it holds an integer >= 1, that integer
         replaces ARGV[1], so an operator changes one user's limit for every process at once.
KEYS[3]  optional: a penalty mark. While it exists the bucket counts as full; it holds the
         Redis time (ms) the penalty ends and expires then (see penalize.lua).
KEYS[4]  optional: the idempotency record of one call id. A replay of a granted call returns
         the first decision and records nothing; a denial is kept only for its
         retry_after_ms, after which a replay is decided afresh.
         Every key shares KEYS[1]'s {hash tag}.

ARGV[1]  limit: units admitted per window, integer >= 1
ARGV[2]  window length in milliseconds, integer >= 1
ARGV[3]  cost: units asked for now, integer >= 1
ARGV[4]  optional reserve, integer >= 0 (default 0): the call is low-priority and is admitted
         only while it leaves `reserve` units for others; it sees a limit of limit - reserve.
ARGV[5]  optional "1": append the decision's Redis time (ms) to the reply; refund.lua takes it.

reply    {granted, remaining, retry_after_ms} [, now_ms]
         granted: 1 when all `cost` units were admitted, 0 when none were (nothing recorded);
         remaining: units that would be admitted right now (after this call);
         retry_after_ms: 0 when granted, else the shortest wait after which the same call is
         admitted if nothing else arrives.
errors   "ERR acquire: <argument> ..." for a bad argument; a cost that can never fit (above
         the limit, or above limit - reserve) is an error, never a silent grant or a wait.
]]

local function int_arg(name, raw, min)
  local n = tonumber(raw)
  if n == nil or n ~= math.floor(n) or n < min or n > 9007199254740991 then
    return nil, redis.error_reply(string.format(
      "ERR acquire: %s must be an integer >= %d, got '%s'", name, min, tostring(raw)))
  end
  return n
end

local limit, err = int_arg("ARGV[1] limit", ARGV[1], 1)
if err then return err end
local window
window, err = int_arg("ARGV[2] window_ms", ARGV[2], 1)
if err then return err end
local cost
cost, err = int_arg("ARGV[3] cost", ARGV[3], 1)
if err then return err end
local reserve = 0
if ARGV[4] ~= nil and ARGV[4] ~= "" then
  reserve, err = int_arg("ARGV[4] reserve", ARGV[4], 0)
  if err then return err end
end
local with_time = ARGV[5] == "1"
if ARGV[5] ~= nil and ARGV[5] ~= "" and ARGV[5] ~= "0" and ARGV[5] ~= "1" then
  return redis.error_reply("ERR acquire: ARGV[5] with_time must be 0 or 1, got '" .. ARGV[5] .. "'")
end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function reply(granted, remaining, retry)
  if with_time then return {granted, remaining, retry, now} end
  return {granted, remaining, retry}
end

local idem = KEYS[4]
if idem then
  local rec = redis.call("GET", idem)
  if rec then
    local g, r, ra, at = string.match(rec, "^(%d+):(%d+):(%d+):(%d+)$")
    if g then
      if with_time then return {tonumber(g), tonumber(r), tonumber(ra), tonumber(at)} end
      return {tonumber(g), tonumber(r), tonumber(ra)}
    end
  end
end

local penalty = 0
if KEYS[2] then
  local override, pen_until
  if KEYS[3] then
    local v = redis.call("MGET", KEYS[2], KEYS[3])
    override, pen_until = v[1], v[2]
  else
    override = redis.call("GET", KEYS[2])
  end
  if override then
    limit, err = int_arg("limit override " .. KEYS[2], override, 1)
    if err then return err end
  end
  if pen_until then
    penalty = math.max(0, (tonumber(pen_until) or 0) - now)
  end
end

local effective = limit - reserve
if cost > effective then
  return redis.error_reply(string.format(
    "ERR acquire: cost %d exceeds the limit %d (reserve %d): it can never be granted",
    cost, limit, reserve))
end

local key = KEYS[1]
local horizon = now - window -- a grant at or before the horizon has left the window
local n = redis.call("LLEN", key)
if n > 0 and tonumber(redis.call("LINDEX", key, 0)) <= horizon then
  -- Gallop then bisect for the first live grant: one expired unit costs two LINDEX, a
  -- whole expired burst costs O(log n), and one LTRIM drops them all.
  local lo, hi = 0, 1 -- lo: known expired; hi: first index not known to be expired
  while hi < n and tonumber(redis.call("LINDEX", key, hi)) <= horizon do
    lo = hi
    hi = math.min(hi * 2, n)
  end
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    if tonumber(redis.call("LINDEX", key, mid)) <= horizon then lo = mid else hi = mid end
  end
  if hi >= n then
    redis.call("DEL", key)
    n = 0
  else
    redis.call("LTRIM", key, hi, -1)
    n = n - hi
  end
end

local granted, remaining, retry
if penalty == 0 and n + cost <= effective then
  local stamp = string.format("%d", now)
  local batch = {}
  for i = 1, cost do
    batch[#batch + 1] = stamp
    if #batch == 1000 or i == cost then
      redis.call("RPUSH", key, unpack(batch))
      batch = {}
    end
  end
  redis.call("PEXPIRE", key, window)
  granted, remaining, retry = 1, effective - n - cost, 0
else
  retry = penalty
  local excess = n + cost - effective
  if excess > 0 then
    -- The call fits once the `excess` oldest units have left the window.
    local ts = tonumber(redis.call("LINDEX", key, excess - 1))
    retry = math.max(retry, ts + window - now)
  end
  granted, retry = 0, math.max(retry, 1)
  if penalty > 0 then remaining = 0 else remaining = math.max(0, effective - n) end
end

if idem then
  local ttl = window
  if granted == 0 then ttl = retry end
  redis.call("SET", idem, string.format("%d:%d:%d:%d", granted, remaining, retry, now), "PX", ttl)
end

return reply(granted, remaining, retry)
