-- check.lua: may the calling Redis user run what the workers need? Reads and writes nothing.
--
-- KEYS[1] a pool state hash, KEYS[2] its event stream (any pool of the prefix: the user's key
-- patterns cover them all). ARGV[1] the change-notice channel. Not the common ARGV layout: no state
-- is loaded. Running it at all proves EVALSHA; the caller checks SCRIPT LOAD first.
-- Reply (JSON): missing  the commands (as "HSET,PUBLISH") this user may not run on those keys and
--                        that channel; "" when none, and on Redis before 7.0 (no redis.acl_check_cmd)
--               config   true when the user may read the eviction policy with CONFIG GET
--               info     true when the user may read it with INFO memory (asking without the
--                        grant would leave a refusal in ACL LOG)

local missing, config, info = {}, false, false
if redis.acl_check_cmd then
  config = redis.acl_check_cmd('CONFIG', 'GET', 'maxmemory-policy') == true
  info = redis.acl_check_cmd('INFO', 'memory') == true
  local checks = {{'TIME'}, {'HGETALL', KEYS[1]}, {'HSET', KEYS[1], 'f', 'v'}, {'HDEL', KEYS[1], 'f'},
                  {'XADD', KEYS[2], '*', 'f', 'v'}, {'XREVRANGE', KEYS[2], '+', '-', 'COUNT', '1'},
                  {'PUBLISH', ARGV[1], 'n'}, {'SUBSCRIBE', ARGV[1]}, {'DEL', KEYS[1], KEYS[2]}}
  for _, c in ipairs(checks) do
    local ok, allowed = pcall(redis.acl_check_cmd, unpack(c))
    if not ok or not allowed then missing[#missing + 1] = c[1] end
  end
end
return cjson.encode({missing = table.concat(missing, ','), config = config, info = info})
