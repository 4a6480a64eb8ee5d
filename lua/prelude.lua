-- @prelude-begin: lua/prelude.lua, what every script shares. Not a script of its own:
-- src/lua.rs runs it before each script's text, and acquire.lua carries this file verbatim
-- (a test checks, byte for byte) so that acquire.lua stays runnable as shipped.
-- Provides:
--   MAX_UNITS, MAX_MS  bounds of units (10000) and of milliseconds (one day)
--   KEPT, REC          the trailer marker 2^47 (acquire.lua KEYS[1]), 6 bytes a record
--   num(raw, min, max)                   a plain decimal integer from min to max, or nil
--   bad(script, name, raw, min, max)     the error reply naming such an argument
--   int_arg(script, name, raw, min, max) num's integer, or nil and bad's reply
--   now_ms()             Redis TIME in milliseconds, floored
--   stamp(state, i)      record i's stamp (0-based)
--   after(state, n, at)  the first record (0-based) stamped above `at`, in n sorted records
--   decode(state)        log, n, kept, trailer: the records without the trailer, their
--                        count, the window the trailer keeps (0 when none) and the trailer
--                        itself (""); nil when state is not a log of REC-byte records
local MAX_UNITS, MAX_MS = 10000, 86400000
local KEPT, REC = 140737488355328, 6 -- 2^47: above every real ms stamp

local function num(raw, min, max)
  if type(raw) ~= "string" or #raw > 15 or not string.find(raw, "^%d+$") then return nil end
  local n = tonumber(raw)
  if n < min or n > max then return nil end
  return n
end
local function bad(script, name, raw, min, max)
  return redis.error_reply(string.format(
    "ERR %s: %s must be an integer from %d to %d, got '%s'", script, name, min, max, tostring(raw)))
end
local function int_arg(script, name, raw, min, max)
  local n = num(raw, min, max)
  if not n then return nil, bad(script, name, raw, min, max) end
  return n
end

local function now_ms()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function stamp(state, i)
  return struct.unpack(">I6", state, i * REC + 1)
end
local function after(state, n, at)
  local lo, hi = -1, n -- records up to lo are <= at; records from hi on are above it
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    if stamp(state, mid) <= at then lo = mid else hi = mid end
  end
  return hi
end
local function decode(state)
  if #state % REC ~= 0 then return nil end
  local n = #state / REC
  if n > 0 then
    local tail = stamp(state, n - 1)
    if tail >= KEPT then
      return string.sub(state, 1, (n - 1) * REC), n - 1, tail - KEPT, string.sub(state, -REC)
    end
  end
  return state, n, 0, ""
end
-- @prelude-end
