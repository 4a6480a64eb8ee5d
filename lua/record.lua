--[[ record.lua: record units on a bucket now, even when it is full.

For a call the limiter did not grant but Torn counted all the same (say, the /v2/key/info
lookup that discovered whose key it is): later grants must see it. Nothing is refused.

KEYS[1]  the bucket's state (acquire.lua KEYS[1])
ARGV[1]  window_ms: the caller's window, integer from 1 to 86400000 (the bucket's longest
         window wins, see acquire.lua KEYS[1])
ARGV[2]  cost: units to record, integer from 1 to 10000 (acquire.lua's bound)
         Numbers are plain decimal integers, as in acquire.lua.

reply    units the bucket now counts in its window, these included
errors   "ERR record: <argument> ..." for a bad argument; a state that is not a string of
         6-byte records is an error (and is left as it is).
]]

local SCRIPT = "record"
local window, err = int_arg(SCRIPT, "ARGV[1] window_ms", ARGV[1], 1, MAX_MS)
if err then return err end
local cost
cost, err = int_arg(SCRIPT, "ARGV[2] cost", ARGV[2], 1, MAX_UNITS)
if err then return err end

local now = now_ms()
local state, n, kept = decode(redis.call("GET", KEYS[1]) or "")
if not state then
  return redis.error_reply("ERR record: the state at KEYS[1] is not a log of 6-byte records")
end
window = math.max(window, kept)
-- Drop what has left the window (stamp + window < now), then insert in time order:
-- provisional records may lie ahead of now.
local live = after(state, n, now - window - 1)
state = string.sub(state, live * REC + 1)
n = n - live
local pos = after(state, n, now)
state = string.sub(state, 1, pos * REC) .. string.rep(struct.pack(">I6", now), cost)
  .. string.sub(state, pos * REC + 1)
n = n + cost
local newest = stamp(state, n - 1)
local ttl = math.max(newest + window - now + 1, redis.call("PTTL", KEYS[1]))
redis.call("SET", KEYS[1], state .. struct.pack(">I6", KEPT + window), "PX", ttl)
return n
