--[[ status.lua: read one bucket without consuming anything (safe on a replica: EVAL_RO).

KEYS[1]  the bucket's state (see acquire.lua)
KEYS[2]  optional: the per-user limit override (see acquire.lua)
KEYS[3]  optional: the penalty mark (see penalize.lua)
         Every key shares KEYS[1]'s {hash tag}.

ARGV[1]  limit: units admitted per window, integer from 1 to 10000 (the override wins)
ARGV[2]  window length in milliseconds, integer from 1 to 86400000; the bucket's longest
         window wins (see acquire.lua KEYS[1])
         Numbers are plain decimal integers, as in acquire.lua.

reply    {used, limit, remaining, reset_after_ms, penalty_ms}
         used: units granted in the last window; limit: the limit in force;
         remaining: units a call would be granted right now (0 while penalized);
         reset_after_ms: wait until the whole limit is free again (0 when it is now);
         penalty_ms: wait until the penalty ends (0 when none).
errors   "ERR status: <argument> ..." for a bad argument; a key holding a list or hash, an
         override or penalty mark that is not an integer, or a state that is not a log of
         6-byte records is an error.
]]

local SCRIPT = "status"
local limit, err = int_arg(SCRIPT, "ARGV[1] limit", ARGV[1], 1, MAX_UNITS)
if err then return err end
local window
window, err = int_arg(SCRIPT, "ARGV[2] window_ms", ARGV[2], 1, MAX_MS)
if err then return err end

local now = now_ms()

local penalty = 0
if KEYS[2] then
  local override = redis.call("GET", KEYS[2])
  if override then
    limit, err = int_arg(SCRIPT, "limit override " .. KEYS[2], override, 1, MAX_UNITS)
    if err then return err end
  end
end
if KEYS[3] then
  local pen_until = redis.call("GET", KEYS[3])
  if pen_until then
    local ends
    ends, err = int_arg(SCRIPT, "penalty mark KEYS[3]", pen_until, 0, KEPT)
    if err then return err end
    penalty = math.max(0, ends - now)
  end
end

local state, n, kept = decode(redis.call("GET", KEYS[1]) or "")
if not state then
  return redis.error_reply("ERR status: the state at KEYS[1] is not a log of 6-byte records")
end
window = math.max(window, kept)
-- A record leaves the window once stamp + window < now (see acquire.lua).
local horizon = now - window - 1
local used, newest = 0, nil
for i = 0, n - 1 do
  local ts = stamp(state, i)
  if ts > horizon then
    used = used + 1
    newest = ts
  end
end

local reset = penalty
if newest then reset = math.max(reset, newest + window + 1 - now) end
local remaining = math.max(0, limit - used)
if penalty > 0 then remaining = 0 end
return {used, limit, remaining, reset, penalty}
