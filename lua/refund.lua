--[[ refund.lua: give back units of a grant that was never sent.

Only the grant's own units may go: removing a later grant's units instead would let the
bucket forget a request that Torn still counts. So the caller names the grant by the Redis
time acquire.lua returned for it (its ARGV[5] = "1").

KEYS[1]  the bucket's state (acquire.lua KEYS[1])
KEYS[2]  optional: the grant's idempotency record (acquire.lua KEYS[4]); deleted, so that a
         replay of the refunded call is decided afresh. Same {hash tag} as KEYS[1].
ARGV[1]  granted_at_ms: the grant's record stamp, integer >= 0: its Redis time, plus its
         hold_ms when it was provisional (acquire.lua ARGV[6])
ARGV[2]  cost: units to give back, integer from 1 to 10000
         Numbers are plain decimal integers, as in acquire.lua.

reply    units given back: cost, or fewer when some already left the window
errors   "ERR refund: <argument> ..." for a bad argument; a state that is not a log of
         6-byte records is an error.
]]

local SCRIPT = "refund"
local at, err = int_arg(SCRIPT, "ARGV[1] granted_at_ms", ARGV[1], 0, KEPT - 1)
if err then return err end
local cost
cost, err = int_arg(SCRIPT, "ARGV[2] cost", ARGV[2], 1, MAX_UNITS)
if err then return err end

if KEYS[2] then redis.call("DEL", KEYS[2]) end
local state = redis.call("GET", KEYS[1])
if not state then return 0 end
if #state % REC ~= 0 then
  return redis.error_reply("ERR refund: the state at KEYS[1] is not a log of 6-byte records")
end
-- Records are in time order: the grant's units are the run of records equal to `at`.
local first, count = nil, 0
for i = 0, math.floor(#state / REC) - 1 do
  local ts = stamp(state, i)
  if ts == at then
    first = first or i
    count = count + 1
    if count == cost then break end
  elseif first or ts > at then
    break
  end
end
if not first then return 0 end
state = string.sub(state, 1, first * REC) .. string.sub(state, (first + count) * REC + 1)
if #state == 0 or (#state == REC and stamp(state, 0) >= KEPT) then
  redis.call("DEL", KEYS[1])
else
  redis.call("SET", KEYS[1], state, "KEEPTTL")
end
return count
