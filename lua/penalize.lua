--[[ penalize.lua: mark a bucket full for a while.

For when Torn answers code 5 although our count had room: the owner spent quota through
another app, so every process must hold that owner back, not just the one that saw it.
A penalty never shortens one already in force.

KEYS[1]  the bucket's penalty mark (acquire.lua KEYS[3]); same {hash tag} as the bucket
ARGV[1]  hold: how long the bucket stays full, in milliseconds from Redis's own clock,
         a plain decimal integer from 1 to 86400000 (one day)

reply    the penalty now in force, in milliseconds (>= ARGV[1])
errors   "ERR penalize: <argument> ..." for a bad argument; a mark that is not an integer
         (or not a string) is an error, and is left as it is.
]]

local SCRIPT = "penalize"
local function int_arg(name, raw, min, max)
  local n = nil
  if type(raw) == "string" and #raw <= 15 and string.find(raw, "^%d+$") then n = tonumber(raw) end
  if n == nil or n < min or n > max then
    return nil, redis.error_reply(string.format(
      "ERR %s: %s must be an integer from %d to %d, got '%s'", SCRIPT, name, min, max, tostring(raw)))
  end
  return n
end

local hold, err = int_arg("ARGV[1] hold_ms", ARGV[1], 1, 86400000)
if err then return err end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wanted = now + hold
local current
current, err = int_arg("the mark at KEYS[1]", redis.call("GET", KEYS[1]) or "0", 0, 140737488355328)
if err then return err end
if current >= wanted then return current - now end
redis.call("SET", KEYS[1], string.format("%d", wanted), "PX", hold)
return hold
