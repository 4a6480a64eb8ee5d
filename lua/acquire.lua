--[[ acquire.lua: take `cost` units from one bucket's exact rolling window.

The bucket is a log of grant times, one record per unit, oldest first. A call is admitted
when the units granted in the last `window` milliseconds plus `cost` fit under the limit,
so in every interval of one window's length at most `limit` units are granted. Time comes
from Redis TIME: workers' clocks may disagree, Redis has one clock.

Exact in real time, not just in Redis milliseconds: TIME is floored to the millisecond, so
a record stamped t was made somewhere in [t, t + 1) ms. It leaves the window only once
t + window < now (not <=), so two grants `limit` apart are always more than one real
window apart.

KEYS[1]  the bucket's state: a string of 6-byte big-endian grant times (Redis ms), one per
         granted unit, oldest first (600 bytes for 100 grants), then one trailer record
         2^47 + the longest window (ms) the bucket has been asked with: 2^47 is above every
         real stamp, so the log stays in order. A caller with a shorter window is decided
         with the longer one, so it never cuts records a longer-window caller still counts.
         The state expires one window after its newest record, so an idle bucket costs no
         memory (and forgets its window).
KEYS[2]  optional: a per-user limit override. When it holds an integer >= 1, that integer
         replaces ARGV[1], so an operator changes one user's limit for every process at once.
KEYS[3]  optional: a penalty mark. While it exists the bucket counts as full; it holds the
         Redis time (ms) the penalty ends and expires then (see penalize.lua).
KEYS[4]  optional: the idempotency record of one call id. A replay of a granted call returns
         the first decision and records nothing; a denial is kept only for its
         retry_after_ms, after which a replay is decided afresh.
         Every key shares KEYS[1]'s {hash tag}.

Numbers are plain decimal integers ("1e3", "0x10", " 5", "5 " are refused).
ARGV[1]  limit: units admitted per window, integer from 1 to 10000
ARGV[2]  window length in milliseconds, integer from 1 to 86400000 (one day); the bucket's
         longest window wins (see KEYS[1])
ARGV[3]  cost: units asked for now, integer from 1 to 10000
ARGV[4]  optional reserve, integer from 0 to 10000 (default 0): the call is low-priority and
         is admitted only while it leaves `reserve` units for others; it sees a limit of
         limit - reserve.
ARGV[5]  optional "1": append the decision's Redis time (ms) to the reply; refund.lua takes it.
ARGV[6]  optional hold_ms, integer from 0 to 86400000 (default 0): the grant is provisional, in flight for
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
         A key holding anything but a string (a list, a hash, ...), a limit override or
         penalty mark that is not such an integer, or a state that is not a log of 6-byte
         records is an error too: nothing is granted and nothing is overwritten.
         The cost that can never fit is refused with a machine-readable code instead of
         ERR: "TQ_COST cost=C limit=L reserve=R: acquire: cost C exceeds ...". The code and
         the three fields before the colon are stable (the Rust store decodes them into
         CostExceedsLimit, in one function); the text after the colon is for people.
]]

-- @prelude-begin: lua/prelude.lua, what every script shares. Not a script of its own:
-- src/lua.rs runs it before each script's text, and acquire.lua carries this file verbatim
-- (a test checks, byte for byte) so that acquire.lua stays runnable as shipped.
-- Provides:
--   MAX_UNITS, MAX_MS  bounds of units (10000) and of milliseconds (one day)
--   KEPT, REC          the trailer marker 2^47 (acquire.lua KEYS[1]), 6 bytes a record
--   num(raw, min, max)                   a plain decimal integer from min to max, or nil
--   bad(script, name, raw, min, max)     the error reply naming such an argument
--   int_arg(script, name, raw, min, max) num's integer, or nil and bad's reply
--   now_ms()             Redis TIME in milliseconds, floored
--   stamp(state, i)      record i's stamp (0-based)
--   after(state, n, at)  the first record (0-based) stamped above `at`, in n sorted records
--   decode(state)        log, n, kept, trailer: the records without the trailer, their
--                        count, the window the trailer keeps (0 when none) and the trailer
--                        itself (""); nil when state is not a log of REC-byte records
local MAX_UNITS, MAX_MS = 10000, 86400000
local KEPT, REC = 140737488355328, 6 -- 2^47: above every real ms stamp

local function num(raw, min, max)
  if type(raw) ~= "string" or #raw > 15 or not string.find(raw, "^%d+$") then return nil end
  local n = tonumber(raw)
  if n < min or n > max then return nil end
  return n
end
local function bad(script, name, raw, min, max)
  return redis.error_reply(string.format(
    "ERR %s: %s must be an integer from %d to %d, got '%s'", script, name, min, max, tostring(raw)))
end
local function int_arg(script, name, raw, min, max)
  local n = num(raw, min, max)
  if not n then return nil, bad(script, name, raw, min, max) end
  return n
end

local function now_ms()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function stamp(state, i)
  return struct.unpack(">I6", state, i * REC + 1)
end
local function after(state, n, at)
  local lo, hi = -1, n -- records up to lo are <= at; records from hi on are above it
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    if stamp(state, mid) <= at then lo = mid else hi = mid end
  end
  return hi
end
local function decode(state)
  if #state % REC ~= 0 then return nil end
  local n = #state / REC
  if n > 0 then
    local tail = stamp(state, n - 1)
    if tail >= KEPT then
      return string.sub(state, 1, (n - 1) * REC), n - 1, tail - KEPT, string.sub(state, -REC)
    end
  end
  return state, n, 0, ""
end
-- @prelude-end

-- One call's arguments (ARGV[1..6]) checked: limit, window, cost, reserve, with_time, hold,
-- or nil and the error reply.
local function args(a1, a2, a3, a4, a5, a6)
  local limit, window, cost = num(a1, 1, MAX_UNITS), num(a2, 1, MAX_MS), num(a3, 1, MAX_UNITS)
  if not limit then return nil, bad("acquire", "ARGV[1] limit", a1, 1, MAX_UNITS) end
  if not window then return nil, bad("acquire", "ARGV[2] window_ms", a2, 1, MAX_MS) end
  if not cost then return nil, bad("acquire", "ARGV[3] cost", a3, 1, MAX_UNITS) end
  local reserve, hold = 0, 0
  if a4 ~= nil and a4 ~= "" then
    reserve = num(a4, 0, MAX_UNITS)
    if not reserve then return nil, bad("acquire", "ARGV[4] reserve", a4, 0, MAX_UNITS) end
  end
  local with_time = a5 == "1"
  if not (a5 == nil or with_time or a5 == "" or a5 == "0") then
    return nil, redis.error_reply("ERR acquire: ARGV[5] with_time must be 0 or 1, got '" .. tostring(a5) .. "'")
  end
  if a6 ~= nil and a6 ~= "" then
    hold = num(a6, 0, MAX_MS)
    if not hold then return nil, bad("acquire", "ARGV[6] hold_ms", a6, 0, MAX_MS) end
  end
  return limit, window, cost, reserve, with_time, hold
end

-- The name of the first key in `keys` that holds something other than a string, and its
-- type, or nil. MGET reads such a key as nil, so only keys read as nil are asked about:
-- one EXISTS for all of them, and TYPE only when something is wrong.
local function wrong_type(keys)
  if #keys == 0 or redis.call("EXISTS", unpack(keys)) == 0 then return nil end
  for _, key in ipairs(keys) do
    local kind = redis.call("TYPE", key).ok
    if kind ~= "none" and kind ~= "string" then return key, kind end
  end
  return nil
end

-- The decision for one call: k1, k2, k4 are KEYS[1], KEYS[2], KEYS[4], the checked
-- arguments from `args`, `now` the Redis time (ms), v1..v4 the values at KEYS[1..4]
-- (false when absent), and `write(key, ttl_ms, value)` stores. acquire_many.lua runs this
-- same function, so the two cannot disagree; it takes scalars, not tables, because
-- building tables is most of a batch's cost.
local function decide(k1, k2, k4, limit, window, cost, reserve, with_time, hold, now,
                      v1, v2, v3, v4, write)
  local override, pen_until, rec = v2, v3, v4

  if rec then
    local g, r, ra, at = string.match(rec, "^(%d+):(%d+):(%d+):(%d+)$")
    if g then
      if with_time then return {tonumber(g), tonumber(r), tonumber(ra), tonumber(at)} end
      return {tonumber(g), tonumber(r), tonumber(ra)}
    end
  end

  if override then
    limit = num(override, 1, MAX_UNITS)
    if not limit then return bad("acquire", "limit override " .. k2, override, 1, MAX_UNITS) end
  end
  local penalty = 0
  if pen_until then
    local ends = num(pen_until, 0, KEPT)
    if not ends then return bad("acquire", "penalty mark KEYS[3]", pen_until, 0, KEPT) end
    penalty = math.max(0, ends - now)
  end

  local effective = limit - reserve
  if cost > effective then
    return redis.error_reply(string.format(
      "TQ_COST cost=%d limit=%d reserve=%d: acquire: cost %d exceeds the limit %d (reserve %d): it can never be granted",
      cost, limit, reserve, cost, limit, reserve))
  end

  local state, n, kept = decode(v1 or "")
  if not state then
    return redis.error_reply("ERR acquire: the state at KEYS[1] is not a log of 6-byte records")
  end
  local grows = window > kept
  if not grows then window = kept end
  local trailer = struct.pack(">I6", KEPT + window)

  -- A record at or before the horizon has left the window: stamp + window < now.
  local horizon = now - window - 1
  if n > 0 and stamp(state, 0) <= horizon then
    -- Bisect for the first live record: O(log n) reads, one cut.
    local live = after(state, n, horizon)
    state = string.sub(state, live * REC + 1)
    n = n - live
  end

  local granted, remaining, retry
  if penalty == 0 and n + cost <= effective then
    local at = now + hold
    local stamps = struct.pack(">I6", at)
    if cost > 1 then stamps = string.rep(stamps, cost) end
    -- Provisional records may lie ahead of this one (a longer hold): insert in time order,
    -- which the bisect above and the retry below rely on. Appending is the common case.
    local last = at
    if n > 0 then
      local newest = stamp(state, n - 1)
      if newest > at then
        last = newest
        local pos = after(state, n, at)
        stamps = string.sub(state, 1, pos * REC) .. stamps .. string.sub(state, pos * REC + 1)
        state = ""
      end
    end
    -- The log lives as long as its newest record counts.
    write(k1, last + window + 1 - now, state .. stamps .. trailer)
    granted, remaining, retry = 1, effective - n - cost, 0
  else
    -- A denial records nothing; the expired records it skipped are cut by the next grant.
    -- Only a longer window than the bucket kept is written, so no shorter caller cuts
    -- what this one counts.
    if grows and n > 0 then
      write(k1, stamp(state, n - 1) + window + 1 - now, state .. trailer)
    end
    retry = penalty
    local excess = n + cost - effective
    if excess > 0 then
      -- The call fits once the `excess` oldest units have left the window.
      retry = math.max(retry, stamp(state, excess - 1) + window + 1 - now)
    end
    granted, retry = 0, math.max(retry, 1)
    if penalty > 0 then remaining = 0 else remaining = math.max(0, effective - n) end
  end

  if k4 then
    local ttl = window + 1 + hold
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

local limit, window, cost, reserve, with_time, hold =
  args(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
if not limit then return window end
local now = now_ms()
-- One read for everything the decision needs: state, override, penalty, replay record.
local v = redis.call("MGET", unpack(KEYS))
local absent = {}
for i = 1, #KEYS do
  if not v[i] then absent[#absent + 1] = KEYS[i] end
end
local key, kind = wrong_type(absent)
if key then
  return redis.error_reply("ERR acquire: " .. key .. " holds a " .. kind .. ", not a string")
end
return decide(KEYS[1], KEYS[2], KEYS[4], limit, window, cost, reserve, with_time, hold,
  now, v[1], v[2], v[3], v[4], psetex)
