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
-- A write that appends no event and sends no notice (a failure that only counts, the common write)
-- checks only the hash commands it runs (`quiet`: HSET, and HDEL when `hdel`).
local function check_acl_for(quiet, hdel, ...)
  if not redis.acl_check_cmd then return nil end
  local checks = {{'HSET', KEYS[1], 'f', 'v'}, ...}
  if hdel or not quiet then checks[#checks + 1] = {'HDEL', KEYS[1], 'f'} end
  if not quiet then
    checks[#checks + 1] = {'XADD', KEYS[2], '*', 'f', 'v'}
    checks[#checks + 1] = {'XTRIM', KEYS[2], 'MINID', '0'}
    for command, channel in string.gmatch(ARGV[1], '(!?)(%S+)') do
      checks[#checks + 1] = {command == '!' and 'SPUBLISH' or 'PUBLISH', channel, 'notice'}
    end
  end
  for _, c in ipairs(checks) do
    if not redis.acl_check_cmd(unpack(c)) then
      return redis.error_reply('COORD_NOPERM the Redis user may not run ' .. c[1] .. ' on ' .. c[2] ..
                               ' (see docs/security.md); nothing was written')
    end
  end
  return nil
end

local function check_acl(...)
  return check_acl_for(false, true, ...)
end

-- What a script that replaces the whole state (reset, heal) can still read of the old one: the hash's
-- fields (empty when KEYS[1] is not a hash) and its epoch, when that looks like one.
local function read_previous()
  local old = {}
  if redis.call('TYPE', KEYS[1]).ok == 'hash' then
    local flat = redis.call('HGETALL', KEYS[1])
    for i = 1, #flat, 2 do old[flat[i]] = flat[i + 1] end
  end
  local epoch = old.epoch or ''
  if #epoch > 64 or not string.match(epoch, '^[%w%._:%-]*$') then epoch = '' end
  return old, epoch
end

-- XADD * can fail on a stream whose last id is absurdly far ahead (the id space ends), and that
-- would be after the state hash was written. Scripts' own ids are server milliseconds. Read only by
-- a call that appends an event.
local function check_stream()
  local last = redis.pcall('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if last.err then
    return redis.error_reply('COORD_CORRUPT ' .. KEYS[2] .. ' has type ' ..
                             redis.call('TYPE', KEYS[2]).ok .. ', expected stream')
  end
  if last[1] ~= nil and #(string.match(last[1][1], '^(%d+)') or '') > MAX_DIGITS then
    return redis.error_reply('COORD_CORRUPT ' .. KEYS[2] .. ' holds an entry id far in the future')
  end
  return nil
end

-- Whether this write can change any worker's decision (docs/design.md, "The local view"): the pointer,
-- an exhausted episode, an event, a skip, a probe, a park, a cooldown that a rotation or a failback
-- waits for, or the set of members whose successes must be reported. A write that only counts (a
-- transient failure below the threshold) or extends a sticky pool's cooldown of a member that is not
-- active sends no notice and moves no version: listeners' decisions stay right. Member fields are
-- written through set_member, which notes the deadlines (S.parks, S.cools); a change of the
-- membership (which also drops members' fields) is decisive by itself.
local DECISIVE_FIELDS = {'active', 'exhausted', 'skip_until', 'probe', 'members', 'weights', 'strategy'}
local function decisive(S, dirty)
  if #S.events > 0 or S.created or S.parks then return true end
  local set, del = S.set, S.del
  for _, f in ipairs(DECISIVE_FIELDS) do
    if set[f] ~= nil or del[f] then return true end
  end
  if S.cools then
    for id, _ in pairs(S.cools) do
      if S.strategy ~= 'sticky' or id == S.active then return true end
    end
  end
  for id, _ in pairs(dirty) do
    if not S.dirty_before[id] then return true end
  end
  for id, _ in pairs(S.dirty_before) do
    if not dirty[id] then return true end
  end
  return false
end

-- The derived fields every validated state carries (see lib/state.lua), the index and the stamp, as
-- far as they differ from the stored ones (a write that only counts a failure of a member already
-- indexed changes neither).
local function index_of(S)
  return table.concat(nondefault_ids(S), ',')
end

local function derived(S, index)
  local out, gone = {}, nil
  local checked = stamp(S)
  if checked ~= S.old_checked then out[1], out[2] = 'checked', checked end
  if index ~= '' then
    if index ~= S.old_index then
      out[#out + 1] = 'nondefault'
      out[#out + 1] = index
    end
  elseif S.old_index ~= '' then
    gone = 'nondefault'
  end
  return out, gone
end

-- Writes the in-memory changes (if any), one stream entry per event, one change notice.
-- A last check that fails writes nothing and leaves its error in S.failed, which reply() returns.
local function commit(S)
  if not S.changed then
    if S.bless and not check_acl() then
      -- A state of an older release that passed the full validation: stamped (and indexed) in place,
      -- no version, no notice: nothing anyone decides on changed.
      local fields, gone = derived(S, index_of(S))
      if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
      if gone then redis.call('HDEL', KEYS[1], gone) end
    end
    return
  end
  local dirty = dirty_set(S)
  local notify = decisive(S, dirty)
  local index = index_of(S)
  S.failed = check_acl_for(#S.events == 0 and not notify, next(S.del) ~= nil or (index == '' and S.old_index ~= ''))
  if S.failed then return end
  if #S.events > 0 then
    S.failed = check_stream()
    if S.failed then return end
  end
  -- The version counts the writes that can change a decision: a write that only counts changes none,
  -- so views and the safety re-read (docs/design.md, "The local view") keep trusting what they hold.
  if notify then
    S.version = S.version + 1
    S.set.version = S.version
  end
  -- Written when it moved (or reads otherwise, say "007"): a write that only counts leaves it.
  if tostring(S.generation) ~= S.generation_read then S.set.generation = S.generation end
  local hset = {}
  for f, v in pairs(S.set) do
    hset[#hset + 1] = f
    hset[#hset + 1] = tostring(v)
  end
  local fields, gone = derived(S, index)
  for _, v in ipairs(fields) do hset[#hset + 1] = v end
  local hdel = {}
  for f, _ in pairs(S.del) do
    if S.set[f] == nil then hdel[#hdel + 1] = f end
  end
  if gone then hdel[#hdel + 1] = gone end
  -- HSET first: Redis refuses it when out of memory, before anything is written. HDEL is allowed
  -- then, and once a script has written, Redis lets it go on writing: a half-applied change.
  -- Without an HSET (a write that only deletes and is quiet), the HDEL is the one write.
  if #hset > 0 then redis.call('HSET', KEYS[1], unpack(hset)) end
  if #hdel > 0 then redis.call('HDEL', KEYS[1], unpack(hdel)) end
  local maxlen, max_age = string.match(ARGV[6], '^(%d+) ?(%d*)$')
  local time_us = #S.events > 0 and now_us() or ''
  for _, ev in ipairs(S.events) do
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen or ARGV[6], '*', unpack(flatten_event(S, ev, time_us)))
  end
  if #S.events > 0 and max_age ~= nil and max_age ~= '' then
    -- Retention by age as well as by count: entries older than max_age go (approximately, whole
    -- macro nodes, so cheap), whatever the count.
    redis.call('XTRIM', KEYS[2], 'MINID', '~', tostring(math.max(0, S.now - tonumber(max_age))))
  end
  if not notify then return end
  -- A sticky pool's notice carries the decision itself (the active member, and the members whose
  -- successes must still be reported), so listeners switch without asking; "-" when it has none.
  local active_hint, dirty_hint = '-', '-'
  if S.strategy == 'sticky' and not S.exhausted and S.active ~= '' and available(S, S.active) then
    active_hint = S.active
    local ids = {}
    for _, id in ipairs(nondefault_ids(S)) do
      if dirty[id] then ids[#ids + 1] = id end
    end
    if #ids > 0 then dirty_hint = table.concat(ids, ',') end
  end
  local notice = ARGV[2] .. ' ' .. S.epoch .. ' ' .. S.generation .. ' ' .. S.version .. ' ' .. active_hint ..
                 ' ' .. dirty_hint
  -- ARGV[1] names one channel or several (the pool's own, and the shared one of older releases);
  -- "!" before a name: a sharded channel (SPUBLISH, Cluster: only the pool's own shard forwards it).
  for command, channel in string.gmatch(ARGV[1], '(!?)(%S+)') do
    redis.call(command == '!' and 'SPUBLISH' or 'PUBLISH', channel, notice)
  end
end

-- A write that only counts a transient failure of member `id` (docs/design.md, "Failure counts"),
-- the fleet's most common write: its `failures` and `failed_at` and nothing else, one ACL check and
-- one HSET. Taken only where commit() would write just these two fields: on a state the stamp vouched
-- for (load_fast) that nothing else in this call changed (the version and generation stay, so does
-- the stamp), and whose index this count does not change (the member was in it already, and no
-- member fell out of it by time). Returns false when the caller must take commit().
local function commit_count(S, id, m)
  if S.changed or not S.fast or tostring(S.generation) ~= S.generation_read or index_of(S) ~= S.old_index then
    return false
  end
  S.failed = check_acl_for(true, false)
  if S.failed then return true end
  redis.call('HSET', KEYS[1], id .. ':failures', tostring(m.failures), id .. ':failed_at', tostring(S.now))
  return true
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
