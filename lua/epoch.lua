--[[ epoch.lua: read a key space's state epoch and the answering server's run_id.

A key space's epoch is a random value set once, without expiry (src/limiter/store/rebuild.rs).
A Redis that comes back empty has lost it: a new value. A Redis restarted from an RDB or AOF
file keeps it, yet may have lost the writes after its last save; the server's run_id, new at
every start, tells that restart. So a process compares both with what it read last, and writes
its journal back when either changed. One script, so that the two come from the one server
owning the epoch's slot (on a Cluster, the node that answered).

KEYS[1]  the key space's epoch, `<prefix>:epoch`
ARGV[1]  offered: the epoch to set when there is none, 1 to 64 visible characters

reply    {epoch, run_id}: the epoch now (ARGV[1] when this call set it) and the server's
         run_id from INFO server ("" if INFO does not name one, or is refused in scripts)
errors   "ERR epoch: ARGV[1] offered ..." for a missing, empty or longer value; an epoch
         that is not a string is an error (WRONGTYPE), and is left as it is.
]]

local SCRIPT = "epoch"
local offered = ARGV[1]
if type(offered) ~= "string" or #offered < 1 or #offered > 64 or string.find(offered, "[%c%s]") then
  return redis.error_reply(string.format(
    "ERR %s: ARGV[1] offered must be 1 to 64 visible characters, got %d bytes", SCRIPT, #(offered or "")))
end
local epoch = redis.call("GET", KEYS[1])
if not epoch then
  redis.call("SET", KEYS[1], offered)
  epoch = offered
end
-- pcall: a managed Redis may refuse INFO inside scripts; the epoch alone then tells.
local info = redis.pcall("INFO", "server")
local run_id = type(info) == "string" and string.match(info, "run_id:(%x+)") or ""
return {epoch, run_id}
