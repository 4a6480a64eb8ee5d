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
local hold, err = int_arg(SCRIPT, "ARGV[1] hold_ms", ARGV[1], 1, MAX_MS)
if err then return err end

local now = now_ms()
local wanted = now + hold
local current
current, err = int_arg(SCRIPT, "the mark at KEYS[1]", redis.call("GET", KEYS[1]) or "0", 0, KEPT)
if err then return err end
if current >= wanted then return current - now end
redis.call("SET", KEYS[1], string.format("%d", wanted), "PX", hold)
return hold
