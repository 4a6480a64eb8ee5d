--[[ release.lua: let go of a lease, only if it is still the caller's.

A lease is a string set with `SET <key> <token> NX PX <ttl>`, the token random per holder.
It can expire while its holder still works, and another process take it then: a plain DEL
by the first holder, once done, would delete the second's lease and let a third in beside
it. So the holder names its token, and the lease goes only while it still holds that token.

KEYS[1]  the lease, e.g. `<prefix>:memo:owner-lookup:<key hash>` (the Torn client's owner
         lookup) or `<prefix>:memo:sending:<key hash>` (the gateway's first send)
ARGV[1]  token: the value its holder set, 1 to 128 bytes

reply    1 when the lease held the token and is gone; 0 when it is absent or another
         holder's, which is left as it is
errors   "ERR release: ARGV[1] token ..." for a missing, empty or longer token; a lease
         that is not a string is an error (WRONGTYPE), and is left as it is.
]]

local SCRIPT = "release"
local token = ARGV[1]
if type(token) ~= "string" or #token < 1 or #token > 128 then
  return redis.error_reply(string.format(
    "ERR %s: ARGV[1] token must be 1 to 128 bytes, got %d", SCRIPT, #(token or "")))
end
if redis.call("GET", KEYS[1]) ~= token then return 0 end
redis.call("DEL", KEYS[1])
return 1
