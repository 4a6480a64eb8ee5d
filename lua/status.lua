--[[ status.lua: read one bucket without consuming anything (safe on a replica: EVAL_RO).

KEYS[1]  the bucket's state (see acquire.lua)
KEYS[2]  optional: the per-user limit override (see acquire.lua)
KEYS[3]  optional: the penalty mark (see penalize.lua)
         Every key shares KEYS[1]'s {hash tag}.

ARGV[1]  limit: units admitted per window, integer >= 1 (the override wins when set)
ARGV[2]  window length in milliseconds, integer >= 1

reply    {used, limit, remaining, reset_after_ms, penalty_ms}
         used: units granted in the last window; limit: the limit in force;
         remaining: units a call would be granted right now (0 while penalized);
         reset_after_ms: wait until the whole limit is free again (0 when it is now);
         penalty_ms: wait until the penalty ends (0 when none).
errors   "ERR status: <argument> ..." for a bad argument.
]]

local function int_arg(name, raw, min)
  local n = tonumber(raw)
  if n == nil or n ~= math.floor(n) or n < min or n > 9007199254740991 then
    return nil, redis.error_reply(string.format(
      "ERR status: %s must be an integer >= %d, got '%s'", name, min, tostring(raw)))
  end
  return n
end

local limit, err = int_arg("ARGV[1] limit", ARGV[1], 1)
if err then return err end
local window
window, err = int_arg("ARGV[2] window_ms", ARGV[2], 1)
if err then return err end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local penalty = 0
if KEYS[2] then
  local override = redis.call("GET", KEYS[2])
  if override then
    limit, err = int_arg("limit override " .. KEYS[2], override, 1)
    if err then return err end
  end
end
if KEYS[3] then
  local pen_until = redis.call("GET", KEYS[3])
  if pen_until then penalty = math.max(0, (tonumber(pen_until) or 0) - now) end
end

-- A record leaves the window once stamp + window < now (see acquire.lua).
local horizon = now - window - 1
local state = redis.call("GET", KEYS[1]) or ""
local used, newest = 0, nil
for i = 0, math.floor(#state / 6) - 1 do
  local ts = struct.unpack(">I6", state, i * 6 + 1)
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
