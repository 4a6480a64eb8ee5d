--[[ settle.lua: restamp provisional grants with the time their calls were answered.

acquire.lua with ARGV[6] = hold_ms stamps a grant's records now + hold_ms: the call may
still be on its way, and Torn counts it when it arrives. Once the answer is back the call
has surely arrived, so its records count one window from now instead. Several settles
(of several buckets) go in one call; each is independent.

KEYS[i]      the state of settle i's bucket (acquire.lua KEYS[1]). On Redis Cluster all
             keys of one call must share a slot: one call per slot.
ARGV[3i-2]   stamp_ms: the provisional stamp, the grant's Redis time + hold_ms, integer >= 0
ARGV[3i-1]   cost: records to restamp, integer >= 1
ARGV[3i]     window_ms: the bucket's window, integer >= 1 (keeps the log alive while its
             newest record counts)

reply        array: for each settle, the records restamped, 0 when they had already left
             the window (a settle that comes too late is harmless) or were refunded.
errors       "ERR settle: <argument> ..." for a bad argument (nothing is written then);
             a state that is not a string of 6-byte records is an error.
]]

local function int_arg(name, raw, min)
  local n = nil
  if type(raw) == "string" and string.match(raw, "^%d+$") and #raw <= 15 then n = tonumber(raw) end
  if n == nil or n < min then
    return nil, redis.error_reply(string.format(
      "ERR settle: %s must be an integer >= %d, got '%s'", name, min, tostring(raw)))
  end
  return n
end

if #KEYS < 1 or #ARGV ~= 3 * #KEYS then
  return redis.error_reply(string.format(
    "ERR settle: %d keys need %d arguments, got %d", #KEYS, 3 * #KEYS, #ARGV))
end
local err
local stamps, costs, windows = {}, {}, {}
for i = 1, #KEYS do
  stamps[i], err = int_arg(string.format("ARGV[%d] stamp_ms", 3 * i - 2), ARGV[3 * i - 2], 0)
  if err then return err end
  costs[i], err = int_arg(string.format("ARGV[%d] cost", 3 * i - 1), ARGV[3 * i - 1], 1)
  if err then return err end
  windows[i], err = int_arg(string.format("ARGV[%d] window_ms", 3 * i), ARGV[3 * i], 1)
  if err then return err end
end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local REC = 6

-- The first record (0-based) whose stamp is above `at`, in a log of n sorted records.
local function after(state, n, at)
  local lo, hi = -1, n
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    if struct.unpack(">I6", state, mid * REC + 1) <= at then lo = mid else hi = mid end
  end
  return hi
end

local out = {}
for i = 1, #KEYS do
  local key, at, cost, window = KEYS[i], stamps[i], costs[i], windows[i]
  local state = redis.call("GET", key)
  local count = 0
  if state and #state % REC ~= 0 then
    return redis.error_reply("ERR settle: the state at KEYS[" .. i .. "] is not a log of 6-byte records")
  end
  -- A record at or before now - window - 1 has left the window: restamping it would count
  -- it again.
  if state and at + window >= now then
    local n = #state / REC
    local first = after(state, n, at - 1)
    while first + count < n and count < cost
      and struct.unpack(">I6", state, (first + count) * REC + 1) == at do
      count = count + 1
    end
    if count > 0 then
      state = string.sub(state, 1, first * REC) .. string.sub(state, (first + count) * REC + 1)
      n = n - count
      local pos = after(state, n, now)
      state = string.sub(state, 1, pos * REC) .. string.rep(struct.pack(">I6", now), count)
        .. string.sub(state, pos * REC + 1)
      n = n + count
      local newest = struct.unpack(">I6", state, (n - 1) * REC + 1)
      -- Never shorten the log's life: a caller with a longer window may still count it.
      local ttl = math.max(newest + window - now + 1, redis.call("PTTL", key))
      redis.call("SET", key, state, "PX", ttl)
    end
  end
  out[i] = count
end
return out
