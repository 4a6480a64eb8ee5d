--[[ penalize.lua: mark a bucket full for a while.

For when Torn answers code 5 although our count had room: the owner spent quota through
another app, so every process must hold that owner back, not just the one that saw it.
A penalty never shortens one already in force.

KEYS[1]  the bucket's penalty mark (acquire.lua KEYS[3]); same {hash tag} as the bucket
ARGV[1]  hold: how long the bucket stays full, in milliseconds from Redis's own clock, integer >= 1

reply    the penalty now in force, in milliseconds (>= ARGV[1])
errors   "ERR penalize: <argument> ..." for a bad argument.
]]

local hold = tonumber(ARGV[1])
if hold == nil or hold ~= math.floor(hold) or hold < 1 or hold > 9007199254740991 then
  return redis.error_reply("ERR penalize: ARGV[1] hold_ms must be an integer >= 1, got '"
    .. tostring(ARGV[1]) .. "'")
end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wanted = now + hold
local current = tonumber(redis.call("GET", KEYS[1]) or "0") or 0
if current >= wanted then return current - now end
redis.call("SET", KEYS[1], string.format("%d", wanted), "PX", hold)
return hold
