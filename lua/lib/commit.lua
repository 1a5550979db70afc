-- lib/commit.lua: writing a changed state back, once, at the end of a script: the hash, one stream entry
-- per event, one change notice; and the reply every script shares.

-- The server clock in microseconds. Stream ids count milliseconds and each pool's stream numbers its
-- own entries, so ids alone cannot order the events of two pools written in the same millisecond;
-- scripts on one server run one at a time, and this clock reading can.
local function now_us()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2]))
end

local function flatten_event(S, ev, time_us)
  local out = {'type', ev.type, 'pool', ARGV[2], 'epoch', S.epoch, 'generation', tostring(ev.generation),
               'time_us', time_us}
  for _, k in ipairs({'from', 'to', 'member', 'kind', 'reason', 'until', 'retry_at'}) do
    local v = ev[k]
    if v ~= nil and v ~= '' then
      out[#out + 1] = k
      if v == math.huge then v = FOREVER end
      out[#out + 1] = tostring(v)
    end
  end
  return out
end

-- Redis has no rollback: a command the caller's ACL refuses aborts a script after the writes before
-- it (say, a state and its event written, the notice refused). So every write command is checked
-- first. redis.acl_check_cmd exists since Redis 7.0; fakeredis (memory://) has neither it nor ACLs.
local function check_acl(...)
  if not redis.acl_check_cmd then return nil end
  local checks = {{'HSET', KEYS[1], 'f', 'v'}, {'HDEL', KEYS[1], 'f'}, {'XADD', KEYS[2], '*', 'f', 'v'},
                  {'PUBLISH', ARGV[1], 'notice'}, ...}
  for _, c in ipairs(checks) do
    if not redis.acl_check_cmd(unpack(c)) then
      return redis.error_reply('COORD_NOPERM the Redis user may not run ' .. c[1] .. ' on ' .. c[2] ..
                               ' (see docs/security.md); nothing was written')
    end
  end
  return nil
end

-- Writes the in-memory changes (if any), one stream entry per event, one change notice.
-- A last check that fails writes nothing and leaves its error in S.failed, which reply() returns.
local function commit(S)
  if not S.changed then return end
  S.failed = check_acl()
  if S.failed then return end
  S.version = S.version + 1
  S.set.version = S.version
  S.set.generation = S.generation
  local hset = {}
  for f, v in pairs(S.set) do
    hset[#hset + 1] = f
    hset[#hset + 1] = tostring(v)
  end
  local hdel = {}
  for f, _ in pairs(S.del) do hdel[#hdel + 1] = f end
  if #hdel > 0 then redis.call('HDEL', KEYS[1], unpack(hdel)) end
  redis.call('HSET', KEYS[1], unpack(hset))
  local time_us = #S.events > 0 and now_us() or ''
  for _, ev in ipairs(S.events) do
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', unpack(flatten_event(S, ev, time_us)))
  end
  -- A sticky pool's notice carries the decision itself (the active member, and the members whose
  -- successes must still be reported), so listeners switch without asking; "-" when it has none.
  local active_hint, dirty_hint = '-', '-'
  if S.strategy == 'sticky' and not S.exhausted and S.active ~= '' and available(S, S.active) then
    active_hint = S.active
    local dirty = {}
    for _, id in ipairs(S.ids) do
      if S.m[id].failures > 0 or S.m[id].ejections > 0 then dirty[#dirty + 1] = id end
    end
    if #dirty > 0 then dirty_hint = table.concat(dirty, ',') end
  end
  redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. S.epoch .. ' ' .. S.generation .. ' ' .. S.version .. ' ' ..
             active_hint .. ' ' .. dirty_hint)
end

-- Reply common to every script; `extra` holds the script's own fields.
local function reply(S, extra)
  if S.failed then return S.failed end
  local types = {}
  for _, ev in ipairs(S.events) do types[#types + 1] = ev.type end
  extra.now = S.now
  extra.epoch = S.epoch
  extra.generation = S.generation
  extra.version = S.version
  extra.active = S.active
  extra.exhausted = S.exhausted
  extra.events = table.concat(types, ',')
  extra.created = S.created
  return cjson.encode(extra)
end
