--[[ restore.lua: write a process's journal of grants back into a bucket Redis lost.

When Redis comes back empty (a restart without persistence, a failover to a replica that
had not caught up, a flush), each process that granted from a bucket in the last window
still holds those grants in its journal (src/limiter/journal.rs). It writes them back with
this script before it grants anything new, so that the surviving processes together
rebuild the window Torn still counts. Restored records are history, not new grants: no
limit is checked, and nothing but the journaled grants themselves is ever added.

Idempotent by grant id: each restored grant's id goes into KEYS[2], so a retried restore,
or two processes restoring at once, never count one grant twice. Each grant keeps its
stamp (provisional stamps stay as they were, so settle.lua still finds them).

KEYS[1]      the bucket's state (acquire.lua KEYS[1])
KEYS[2]      the bucket's restored-grant ids: a set, same {hash tag} as KEYS[1]; it lives as
             long as the log's newest restored record counts
ARGV[1]      window_ms: the journal's window, integer from 1 to 86400000 (the bucket's
             longest window wins, see acquire.lua KEYS[1])
ARGV[3i-1]   grant i's id: 1 to 64 visible characters, unique per process and grant
ARGV[3i]     grant i's stamp_ms: its records' stamp (Redis ms, + hold_ms when provisional),
             integer from 0 to 2^47 - 1
ARGV[3i+1]   grant i's cost: records, integer from 1 to 10000
             Numbers are plain decimal integers, as in acquire.lua.

reply        units written back: grants already restored (by id) or already out of the
             window (stamp + window < now, by this Redis's TIME: after a failover to
             another clock, only what is still ahead of it) add nothing
errors       "ERR restore: <argument> ..." for a bad argument: every argument is checked
             before anything is written, so then nothing is; a state that is not a log of
             6-byte records is an error.
]]

local SCRIPT = "restore"
if #KEYS ~= 2 or #ARGV < 1 or (#ARGV - 1) % 3 ~= 0 then
  return redis.error_reply(string.format(
    "ERR restore: needs 2 keys and 1 + 3n arguments, got %d keys and %d arguments", #KEYS, #ARGV))
end
local window, err = int_arg(SCRIPT, "ARGV[1] window_ms", ARGV[1], 1, MAX_MS)
if err then return err end
local count = (#ARGV - 1) / 3
local ids, stamps, costs = {}, {}, {}
for i = 1, count do
  local id = ARGV[3 * i - 1]
  if #id < 1 or #id > 64 or not string.find(id, "^[%w%p]+$") then
    return redis.error_reply(string.format(
      "ERR restore: ARGV[%d] grant id must be 1 to 64 visible characters", 3 * i - 1))
  end
  ids[i] = id
  stamps[i], err = int_arg(SCRIPT, string.format("ARGV[%d] stamp_ms", 3 * i), ARGV[3 * i], 0, KEPT - 1)
  if err then return err end
  costs[i], err = int_arg(SCRIPT, string.format("ARGV[%d] cost", 3 * i + 1), ARGV[3 * i + 1], 1, MAX_UNITS)
  if err then return err end
end

local now = now_ms()
local raw = redis.call("GET", KEYS[1]) or ""
local state, n, kept = decode(raw)
if not state then
  return redis.error_reply("ERR restore: the state at KEYS[1] is not a log of 6-byte records")
end
window = math.max(window, kept)

local restored = 0
for i = 1, count do
  local at, cost = stamps[i], costs[i]
  -- A record at or before now - window - 1 has left the window (acquire.lua's rule).
  if at + window >= now and redis.call("SADD", KEYS[2], ids[i]) == 1 then
    local pos = after(state, n, at)
    state = string.sub(state, 1, pos * REC) .. string.rep(struct.pack(">I6", at), cost)
      .. string.sub(state, pos * REC + 1)
    n = n + cost
    restored = restored + cost
  end
end

if restored > 0 then
  local ttl = stamp(state, n - 1) + window + 1 - now
  -- Never shorten the log's life.
  ttl = math.max(ttl, redis.call("PTTL", KEYS[1]))
  redis.call("SET", KEYS[1], state .. struct.pack(">I6", KEPT + window), "PX", ttl)
  redis.call("PEXPIRE", KEYS[2], math.max(ttl, redis.call("PTTL", KEYS[2])))
end
return restored
