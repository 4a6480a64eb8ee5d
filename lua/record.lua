--[[ record.lua: record units on a bucket now, even when it is full.

For a call the limiter did not grant but Torn counted all the same (say, the /v2/key/info
lookup that discovered whose key it is): later grants must see it. Nothing is refused.

KEYS[1]  the bucket's state (acquire.lua KEYS[1])
ARGV[1]  window_ms: the bucket's window, integer >= 1
ARGV[2]  cost: units to record, integer from 1 to 10000 (acquire.lua's bound)

reply    units the bucket now counts in its window, these included
errors   "ERR record: <argument> ..." for a bad argument; a state that is not a string of
         6-byte records is an error (and is left as it is).
]]

local function int_arg(name, raw, min, max)
  local n = nil
  if type(raw) == "string" and string.match(raw, "^%d+$") and #raw <= 15 then n = tonumber(raw) end
  if n == nil or n < min or n > max then
    return nil, redis.error_reply(string.format(
      "ERR record: %s must be an integer from %d to %d, got '%s'", name, min, max, tostring(raw)))
  end
  return n
end

local window, err = int_arg("ARGV[1] window_ms", ARGV[1], 1, 86400000)
if err then return err end
local cost
cost, err = int_arg("ARGV[2] cost", ARGV[2], 1, 10000)
if err then return err end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local REC = 6
local state = redis.call("GET", KEYS[1]) or ""
if #state % REC ~= 0 then
  return redis.error_reply("ERR record: the state at KEYS[1] is not a log of 6-byte records")
end
local n = #state / REC
-- Drop what has left the window (stamp + window < now), then insert in time order:
-- provisional records may lie ahead of now.
local lo, hi = -1, n
while hi - lo > 1 do
  local mid = math.floor((lo + hi) / 2)
  if struct.unpack(">I6", state, mid * REC + 1) < now - window then lo = mid else hi = mid end
end
state = string.sub(state, hi * REC + 1)
n = n - hi
lo, hi = -1, n
while hi - lo > 1 do
  local mid = math.floor((lo + hi) / 2)
  if struct.unpack(">I6", state, mid * REC + 1) <= now then lo = mid else hi = mid end
end
state = string.sub(state, 1, hi * REC) .. string.rep(struct.pack(">I6", now), cost)
  .. string.sub(state, hi * REC + 1)
n = n + cost
local newest = struct.unpack(">I6", state, (n - 1) * REC + 1)
local ttl = math.max(newest + window - now + 1, redis.call("PTTL", KEYS[1]))
redis.call("SET", KEYS[1], state, "PX", ttl)
return n
