--[[ acquire.lua: take `cost` units from one bucket's exact rolling window.

The bucket is a log of grant times, one record per unit, oldest first. A call is admitted
when the units granted in the last `window` milliseconds plus `cost` fit under the limit,
so in every interval of one window's length at most `limit` units are granted. Time comes
from Redis TIME: workers' clocks may disagree, Redis has one clock.

KEYS[1]  the bucket's state: a string of 6-byte big-endian grant times (Redis ms), one per
         granted unit, oldest first (600 bytes for 100 grants). It expires one window after
         the last grant, so an idle bucket costs no memory.
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
ARGV[6]  optional hold_ms, integer >= 0 (default 0): the grant is provisional, in flight for
         up to `hold_ms`. Its records are stamped now + hold_ms (kept in time order), so they
         count until now + hold_ms + window unless settle.lua restamps them with the time
         the call was answered. refund.lua and settle.lua find them by that stamp.

reply    {granted, remaining, retry_after_ms} [, now_ms]
         granted: 1 when all `cost` units were admitted, 0 when none were (nothing recorded);
         remaining: units that would be admitted right now (after this call);
         retry_after_ms: 0 when granted, else the shortest wait after which the same call is
         admitted if nothing else arrives.
errors   "ERR acquire: <argument> ..." for a bad argument; a cost that can never fit (above
         the limit, or above limit - reserve) is an error, never a silent grant or a wait.
]]

local function bad(name, raw, min)
  return redis.error_reply(string.format(
    "ERR acquire: %s must be an integer >= %d, got '%s'", name, min, tostring(raw)))
end
local function is_int(n, min)
  return n ~= nil and n == math.floor(n) and n >= min and n <= 9007199254740991
end

-- The decision for one call: k1..k4 are KEYS[1..4], a1..a6 ARGV[1..6], `now` the Redis
-- time (ms), v1..v4 the values at k1..k4 (false when absent), and `write(key, ttl_ms,
-- value)` stores. acquire_many.lua runs this same function, so the two cannot disagree;
-- it takes scalars, not tables, because building tables is most of a batch's cost.
local function decide(k1, k2, k4, a1, a2, a3, a4, a5, a6, now, v1, v2, v3, v4, write)
  -- Arguments are checked on one line each: this is the hot path of every worker.
  local limit, window, cost = tonumber(a1), tonumber(a2), tonumber(a3)
  if not is_int(limit, 1) then return bad("ARGV[1] limit", a1, 1) end
  if not is_int(window, 1) then return bad("ARGV[2] window_ms", a2, 1) end
  if not is_int(cost, 1) then return bad("ARGV[3] cost", a3, 1) end
  local reserve = 0
  if a4 ~= nil and a4 ~= "" then
    reserve = tonumber(a4)
    if not is_int(reserve, 0) then return bad("ARGV[4] reserve", a4, 0) end
  end
  local with_time = a5 == "1"
  if not (a5 == nil or with_time or a5 == "" or a5 == "0") then
    return redis.error_reply("ERR acquire: ARGV[5] with_time must be 0 or 1, got '" .. a5 .. "'")
  end
  local hold = 0
  if a6 ~= nil and a6 ~= "" then
    hold = tonumber(a6)
    if not is_int(hold, 0) then return bad("ARGV[6] hold_ms", a6, 0) end
  end

  local state, override, pen_until, rec = v1 or "", v2, v3, v4

  if rec then
    local g, r, ra, at = string.match(rec, "^(%d+):(%d+):(%d+):(%d+)$")
    if g then
      if with_time then return {tonumber(g), tonumber(r), tonumber(ra), tonumber(at)} end
      return {tonumber(g), tonumber(r), tonumber(ra)}
    end
  end

  if override then
    limit = tonumber(override)
    if not is_int(limit, 1) then return bad("limit override " .. k2, override, 1) end
  end
  local penalty = 0
  if pen_until then penalty = math.max(0, (tonumber(pen_until) or 0) - now) end

  local effective = limit - reserve
  if cost > effective then
    return redis.error_reply(string.format(
      "ERR acquire: cost %d exceeds the limit %d (reserve %d): it can never be granted",
      cost, limit, reserve))
  end

  -- Records are 6 bytes; record i (0-based) starts at byte i * 6 + 1.
  local n = #state / 6
  local horizon = now - window -- a grant at or before the horizon has left the window
  if n > 0 and struct.unpack(">I6", state) <= horizon then
    -- Bisect for the first live record: O(log n) reads, one cut.
    local lo, hi = 0, n -- record lo has expired; records from hi on are live
    while hi - lo > 1 do
      local mid = math.floor((lo + hi) / 2)
      if struct.unpack(">I6", state, mid * 6 + 1) <= horizon then lo = mid else hi = mid end
    end
    state = string.sub(state, hi * 6 + 1)
    n = n - hi
  end

  local granted, remaining, retry
  if penalty == 0 and n + cost <= effective then
    local at = now + hold
    local stamp = struct.pack(">I6", at)
    if cost > 1 then stamp = string.rep(stamp, cost) end
    -- Provisional records may lie ahead of this one (a longer hold): insert in time order,
    -- which the bisect above and the retry below rely on. Appending is the common case.
    local last = at
    if n > 0 then
      local newest = struct.unpack(">I6", state, (n - 1) * 6 + 1)
      if newest > at then
        last = newest
        local lo, hi = -1, n - 1 -- records up to lo are <= at; record hi is > at
        while hi - lo > 1 do
          local mid = math.floor((lo + hi) / 2)
          if struct.unpack(">I6", state, mid * 6 + 1) <= at then lo = mid else hi = mid end
        end
        stamp = string.sub(state, 1, hi * 6) .. stamp .. string.sub(state, hi * 6 + 1)
        state = ""
      end
    end
    -- The log lives as long as its newest record counts.
    write(k1, last + window - now, state .. stamp)
    granted, remaining, retry = 1, effective - n - cost, 0
  else
    -- A denial records nothing; the expired records it skipped are cut by the next grant.
    retry = penalty
    local excess = n + cost - effective
    if excess > 0 then
      -- The call fits once the `excess` oldest units have left the window.
      retry = math.max(retry, struct.unpack(">I6", state, (excess - 1) * 6 + 1) + window - now)
    end
    granted, retry = 0, math.max(retry, 1)
    if penalty > 0 then remaining = 0 else remaining = math.max(0, effective - n) end
  end

  if k4 then
    local ttl = window + hold
    if granted == 0 then ttl = retry end
    write(k4, ttl, string.format("%d:%d:%d:%d", granted, remaining, retry, now))
  end

  if with_time then return {granted, remaining, retry, now} end
  return {granted, remaining, retry}
end

local function psetex(key, ttl, value)
  redis.call("PSETEX", key, ttl, value)
end
-- @shared-end: acquire_many.lua runs everything above this line, then its own body.

local t = redis.call("TIME")
-- One read for everything the decision needs: state, override, penalty, replay record.
local v = redis.call("MGET", unpack(KEYS))
return decide(KEYS[1], KEYS[2], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
  t[1] * 1000 + math.floor(t[2] / 1000), v[1], v[2], v[3], v[4], psetex)
