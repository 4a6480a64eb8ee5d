--[[ refund.lua: give back units of a grant that was never sent.

Only the grant's own units may go: removing a later grant's units instead would let the
bucket forget a request that Torn still counts. So the caller names the grant by the Redis
time acquire.lua returned for it (its ARGV[5] = "1").

KEYS[1]  the bucket's state (acquire.lua KEYS[1])
KEYS[2]  optional: the grant's idempotency record (acquire.lua KEYS[4]); deleted, so that a
         replay of the refunded call is decided afresh. Same {hash tag} as KEYS[1].
ARGV[1]  granted_at_ms: the grant's Redis time, integer >= 0
ARGV[2]  cost: units to give back, integer >= 1

reply    units given back: cost, or fewer when some already left the window
errors   "ERR refund: <argument> ..." for a bad argument.
]]

local function int_arg(name, raw, min)
  local n = tonumber(raw)
  if n == nil or n ~= math.floor(n) or n < min or n > 9007199254740991 then
    return nil, redis.error_reply(string.format(
      "ERR refund: %s must be an integer >= %d, got '%s'", name, min, tostring(raw)))
  end
  return n
end

local at, err = int_arg("ARGV[1] granted_at_ms", ARGV[1], 0)
if err then return err end
local cost
cost, err = int_arg("ARGV[2] cost", ARGV[2], 1)
if err then return err end

if KEYS[2] then redis.call("DEL", KEYS[2]) end
local state = redis.call("GET", KEYS[1])
if not state then return 0 end
-- Records are in time order: the grant's units are the run of records equal to `at`.
local REC = 6
local first, count = nil, 0
for i = 0, math.floor(#state / REC) - 1 do
  local ts = struct.unpack(">I6", state, i * REC + 1)
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
if #state == 0 then
  redis.call("DEL", KEYS[1])
else
  redis.call("SET", KEYS[1], state, "KEEPTTL")
end
return count
