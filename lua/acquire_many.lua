--[[ acquire_many.lua: several acquire.lua decisions in one EVALSHA.

A client that has many decisions in flight at once sends them together. Most of a
decision's cost in Redis is its calls back into Redis (TIME, MGET, PSETEX, about 1 µs
each); a batch makes one TIME and one MGET for all its decisions, then one PSETEX per
grant. Each decision is what acquire.lua decides for the same KEYS and ARGV at the batch's
time, taken in order: a bucket that appears twice sees the first decision's write.

Not standalone: src/lua.rs runs prelude.lua, then acquire.lua from its `@prelude-end` to
its `@shared-end` line, which defines `decide(...)` (one decision from its keys, arguments,
time and values) and `psetex`: both scripts run one implementation.
Keys of different buckets (different hash tags) may share a call on a single Redis node;
a Redis Cluster client sends one call per hash slot.

KEYS     four keys per decision, in order: acquire.lua's KEYS[1..4] for decision i are
         KEYS[4i-3..4i]. An optional key not used is passed as "" (the empty name) or as
         a repeat of the decision's own KEYS[1]: on Redis Cluster every key of a call must
         hash to one slot, and "" has no hash tag. Either is read as unused, never written.
ARGV[1]  n, the number of decisions, integer from 1 to 1000.
ARGV     then six arguments per decision: acquire.lua's ARGV[1..6] for decision i are
         ARGV[6i-4..6i+1] (ARGV[6], hold_ms, makes that decision's grant provisional);
         optional ones not used are passed as "".
reply    n entries in order: acquire.lua's reply for the decision, or, when acquire.lua
         refused it with an error reply, that error's message as a string (a cost above a
         limit override, a key of the decision holding a list or hash, a malformed state:
         that decision alone fails and writes nothing). A cost refusal keeps acquire.lua's
         stable "TQ_COST cost=C limit=L reserve=R: ..." prefix.
errors   "ERR acquire_many: ..." when the call's shape is wrong, and "ERR acquire_many:
         decision i: <acquire.lua's message>" when any decision's arguments are bad: every
         decision's arguments are checked before anything is written, so then nothing is.
]]

local n = num(ARGV[1], 1, 1000)
if not n then
  return redis.error_reply("ERR acquire_many: ARGV[1] n must be an integer from 1 to 1000, got '" .. tostring(ARGV[1]) .. "'")
end
if #KEYS ~= 4 * n or #ARGV ~= 6 * n + 1 then
  return redis.error_reply(string.format(
    "ERR acquire_many: %d decisions need %d keys and %d arguments, got %d and %d",
    n, 4 * n, 6 * n + 1, #KEYS, #ARGV))
end

-- Every decision's arguments, checked before anything is written.
local L, W, C, R, T, H = {}, {}, {}, {}, {}, {}
for i = 1, n do
  local a = 6 * i - 4
  local limit, window, cost, reserve, with_time, hold =
    args(ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5])
  if not limit then
    return redis.error_reply("ERR acquire_many: decision " .. i .. ": "
      .. string.gsub(window.err, "^ERR ", ""))
  end
  L[i], W[i], C[i], R[i], T[i], H[i] = limit, window, cost, reserve, with_time, hold
end

local now = now_ms()
local all = redis.call("MGET", unpack(KEYS))

-- Keys read as nil that a decision uses: any of them holding a list or hash fails that
-- decision (one EXISTS for all; TYPE only when something is wrong).
local absent = {}
for j = 1, 4 * n do
  local key = KEYS[j]
  local k1 = KEYS[j - (j - 1) % 4]
  if not all[j] and key ~= "" and (key ~= k1 or (j - 1) % 4 == 0) then
    absent[#absent + 1] = key
  end
end
local broken = {}
if wrong_type(absent) then
  for j = 1, #absent do
    local kind = redis.call("TYPE", absent[j]).ok
    if kind ~= "none" and kind ~= "string" then broken[absent[j]] = kind end
  end
end

-- Values written by earlier decisions of this batch: a bucket asked twice must see them.
local fresh = {}
local function write(key, ttl, value)
  psetex(key, ttl, value)
  fresh[key] = value
end

local out = {}
for i = 1, n do
  local k = 4 * i - 3
  local k1, k2, k3, k4 = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  -- Unused optional keys are "" or a repeat of k1: read as absent, never written.
  local v1, v2, v3, v4 = fresh[k1] or all[k], false, false, false
  if k2 ~= "" and k2 ~= k1 then v2 = all[k + 1] else k2 = "" end
  if k3 ~= "" and k3 ~= k1 then v3 = all[k + 2] else k3 = "" end
  if k4 ~= "" and k4 ~= k1 then v4 = fresh[k4] or all[k + 3] else k4 = nil end
  local bad_key = (broken[k1] and k1) or (broken[k2] and k2) or (broken[k3] and k3)
    or (k4 and broken[k4] and k4)
  if bad_key then
    out[i] = "ERR acquire: " .. bad_key .. " holds a " .. broken[bad_key] .. ", not a string"
  else
    local r = decide(k1, k2, k4, L[i], W[i], C[i], R[i], T[i], H[i], now, v1, v2, v3, v4, write)
    if r.err then out[i] = r.err else out[i] = r end
  end
end
return out
