--[[ settle.lua: restamp provisional grants with the time their calls were answered.

acquire.lua with ARGV[6] = hold_ms stamps a grant's records now + hold_ms: the call may
still be on its way, and Torn counts it when it arrives. Once the answer is back the call
has surely arrived, so its records count one window from now instead. Several settles
(of several buckets) go in one call; each is independent.

KEYS[i]      the state of settle i's bucket (acquire.lua KEYS[1]). On Redis Cluster all
             keys of one call must share a slot: one call per slot.
ARGV[3i-2]   stamp_ms: the provisional stamp, the grant's Redis time + hold_ms, integer >= 0
ARGV[3i-1]   cost: records to restamp, integer from 1 to 10000
ARGV[3i]     window_ms: the caller's window, integer from 1 to 86400000 (the bucket's
             longest window wins, see acquire.lua KEYS[1]); keeps the log alive while its
             newest record counts
             Numbers are plain decimal integers, as in acquire.lua.

reply        array: for each settle, the records restamped, 0 when they had already left
             the window (a settle that comes too late is harmless) or were refunded; or,
             for a state that is not a log of 6-byte records, an error message string
             (that state is left as it is, the other settles still happen).
errors       "ERR settle: <argument> ..." for a bad argument: every argument is checked
             before anything is written, so then nothing is. A key holding a list or
             hash is an error (Redis's WRONGTYPE).
]]

local SCRIPT = "settle"
if #KEYS < 1 or #ARGV ~= 3 * #KEYS then
  return redis.error_reply(string.format(
    "ERR settle: %d keys need %d arguments, got %d", #KEYS, 3 * #KEYS, #ARGV))
end
local err
local stamps, costs, windows = {}, {}, {}
for i = 1, #KEYS do
  stamps[i], err = int_arg(SCRIPT, string.format("ARGV[%d] stamp_ms", 3 * i - 2), ARGV[3 * i - 2], 0, KEPT - 1)
  if err then return err end
  costs[i], err = int_arg(SCRIPT, string.format("ARGV[%d] cost", 3 * i - 1), ARGV[3 * i - 1], 1, MAX_UNITS)
  if err then return err end
  windows[i], err = int_arg(SCRIPT, string.format("ARGV[%d] window_ms", 3 * i), ARGV[3 * i], 1, MAX_MS)
  if err then return err end
end

local now = now_ms()

local out = {}
for i = 1, #KEYS do
  local key, at, cost, window = KEYS[i], stamps[i], costs[i], windows[i]
  local raw = redis.call("GET", key)
  local count = 0
  local state, n, kept, trailer = nil, 0, 0, ""
  if raw then state, n, kept, trailer = decode(raw) end
  local malformed = raw and not state
  if state then window = math.max(window, kept) end
  -- A record at or before now - window - 1 has left the window: restamping it would count
  -- it again.
  if state and at + window >= now then
    local first = after(state, n, at - 1)
    while first + count < n and count < cost and stamp(state, first + count) == at do
      count = count + 1
    end
    if count > 0 then
      state = string.sub(state, 1, first * REC) .. string.sub(state, (first + count) * REC + 1)
      n = n - count
      local pos = after(state, n, now)
      state = string.sub(state, 1, pos * REC) .. string.rep(struct.pack(">I6", now), count)
        .. string.sub(state, pos * REC + 1)
      n = n + count
      local newest = stamp(state, n - 1)
      -- Never shorten the log's life.
      local ttl = math.max(newest + window - now + 1, redis.call("PTTL", key))
      redis.call("SET", key, state .. trailer, "PX", ttl)
    end
  end
  if malformed then
    out[i] = "ERR settle: the state at KEYS[" .. i .. "] is not a log of 6-byte records"
  else
    out[i] = count
  end
end
return out
