-- heal.lua: a pool's state that the other scripts refuse as corrupt is rebuilt, automatically, under a new
-- epoch, keeping every member state that can still be read (docs/design.md, "Corrupt state").
--
-- KEYS[1] pool state hash, KEYS[2] pool event stream
-- ARGV[1..6] common (see lib/state.lua); ARGV[4] must hold the membership spec (reply {"need_spec":true}
--          otherwise, before anything is touched); ARGV[5] becomes the new epoch
-- ARGV[7]  "read" for a read-only caller (snapshot, events): it heals only under the stored membership,
--          and when that is unreadable answers COORD_CORRUPT <what>, having dropped only the derived
--          field `checked` (so the next worker's call validates in full and heals); "" otherwise
-- ARGV[8]  the cooling kinds a salvaged `<id>:cooling_kind` may hold, comma-separated (core/kinds.py
--          COOLING_KINDS, sent by store/codec.py: the list has one place)
--
-- Idempotent, so that many workers meeting one corruption at once heal it exactly once fleet-wide: it first
-- checks the state itself, as the other scripts do (types of both keys, the header, the membership, every
-- member's fields, the stream's last id, the stream's entries, a stored membership that does not match its
-- own digest), and writes nothing when it finds nothing wrong: another worker healed it first.
-- Otherwise, in one atomic step: the hash is replaced by a fresh state under a new epoch. Its membership is
-- the stored one (members, weights, strategy, revision, membership_at) when that is readable, adds up to its
-- digest and its revision is at least the caller's (the caller is then answered as foreign, lib/membership.lua;
-- a read-only caller always keeps the stored one), else the caller's. It holds what could be read of each
-- member (cooldown deadline and kind, failure and ejection counts, the last counted failure capped at now,
-- a park and its reason; every field on its own: a garbage field is dropped, its neighbours kept), the
-- pointer (kept when it names a member that can serve, else moved forward), the model skip; the probe
-- lease is dropped. The stream is kept when it is readable, else replaced. One `healed` event (`to` the
-- active member, `reason` what was found) and the field `healed` ("<ms> <what>") record it; when no member
-- can serve, an `exhausted` event follows it (every exhausted episode has its event).
-- Reply (JSON): common fields plus
--   healed          true when this call rebuilt the state (false: nothing was wrong, nothing written)
--   found           what was corrupt ("" when nothing)
--   previous_epoch  the epoch of the replaced state, "" when it had none readable
--   kept            how many members kept some state
--   dropped         how many unreadable member fields were dropped
--   stream_replaced true when the event stream was replaced
--   transitioned    same as healed
--   and, when the state is sound but another configuration's, lib/membership.lua's foreign, usable

if ARGV[4] == '' then return NEED_SPEC end
local READ_ONLY = ARGV[7] == 'read'
local KINDS = {}
for kind in string.gmatch(ARGV[8] or '', '[^,]+') do KINDS[kind] = true end

-- What is wrong with the event stream, or nil. Entries are read in full (a heal is rare): an entry
-- coordinator did not write makes `events()` fail.
local function bad_stream()
  local kind = redis.call('TYPE', KEYS[2]).ok
  if kind == 'none' then return nil end
  if kind ~= 'stream' then return KEYS[2] .. ' has type ' .. kind .. ', expected stream' end
  local entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 20000)
  for _, entry in ipairs(entries) do
    if #(string.match(entry[1], '^(%d+)') or '') > MAX_DIGITS then
      return KEYS[2] .. ' holds an entry id far in the future'
    end
    local f = {}
    for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
    if f.type == nil or f.epoch == nil or not string.match(f.generation or '', '^%d+$') then
      return KEYS[2] .. ' holds an entry ' .. entry[1] .. ' that coordinator did not write'
    end
  end
  return nil
end

-- What is wrong with the pool, or nil; whether the stream must go; an error reply; the state as loaded.
local function diagnose()
  local S, err = load(true)
  if not S then
    if type(err) == 'table' and type(err.err) == 'string' and string.find(err.err, '^COORD_CORRUPT ') then
      local what = string.sub(err.err, #'COORD_CORRUPT ' + 1)
      -- A stream of the wrong type is found by the state's check only when it is the state key's.
      return what, bad_stream() ~= nil
    end
    return nil, false, err
  end
  local stream = bad_stream()
  if stream then return stream, true, nil, S end
  if rawget(S, 'digest') == ARGV[3] and not S.changed then
    local ok, spec = pcall(cjson.decode, ARGV[4])
    local want = ok and type(spec) == 'table' and type(spec.members) == 'table' and table.concat(spec.members, ',')
    if want and S.members_csv ~= want then
      return KEYS[1] .. ' field members does not match its digest (edited by hand)', false, nil, S
    end
  end
  return nil, false, nil, S
end

local found, replace_stream, err, loaded = diagnose()
if err then return err end
if found == nil and loaded and loaded.foreign then
  -- Sound, and another configuration's (lib/membership.lua): the reply says what this caller may use.
  return reply(loaded, {healed = false, found = '', previous_epoch = '', kept = 0, dropped = 0,
                        stream_replaced = false, transitioned = false})
end
if found == nil then
  local S = new_state()
  local v = redis.call('HMGET', KEYS[1], 'epoch', 'generation', 'version', 'active', 'exhausted')
  S.epoch, S.generation, S.version, S.active, S.exhausted = v[1] or '', tonumber(v[2]) or 0, tonumber(v[3]) or 0,
                                                             v[4] or '', v[5] == '1'
  return reply(S, {healed = false, found = '', previous_epoch = '', kept = 0, dropped = 0,
                   stream_replaced = false, transitioned = false})
end

-- Read what can be salvaged before deleting anything.
local old, previous_epoch = read_previous()

-- The stored membership, when it can be kept: readable, adding up to its own digest (so not edited by
-- hand), with a readable revision. Returns the spec (JSON), its digest, its revision; nil otherwise.
local function stored_membership()
  local ids, weights = split_csv(old.members), split_csv(old.weights)
  if old.members == nil or bad_membership(ids, weights) or not STRATEGIES[old.strategy or ''] then return nil end
  local rev = int_field(old, 'revision', 0)
  if rev == nil then return nil end
  local w = {}
  for i, x in ipairs(weights) do w[i] = tonumber(x) end
  local spec = {members = ids, strategy = old.strategy, weights = w}
  local digest = old.digest or ''
  if not string.match(digest, '^%x+$') or #digest > 64 then return nil end
  if redis.sha1hex then  -- Redis has it (the stand-in's fakeredis does not): the digest must add up
    local json = '{"members":' .. cjson.encode(ids) .. ',"strategy":' .. cjson.encode(old.strategy) ..
                 ',"weights":[' .. table.concat(weights, ',') .. ']}'
    if string.sub(redis.sha1hex(json), 1, 16) ~= digest then return nil end
  end
  if rev > 0 then spec.revision = rev end
  return cjson.encode(spec), digest, rev
end

local decoded, caller = pcall(cjson.decode, ARGV[4])
if not decoded or type(caller) ~= 'table' then
  return redis.error_reply('COORD_BAD_ARGUMENT membership spec is not valid')
end
local caller_rev = tonumber(caller.revision) or 0
local stored_spec, stored_digest, stored_rev = stored_membership()
local foreign = nil
-- Under the caller's digest the stored membership is the caller's own (or was edited by hand: then the
-- caller's spec is what the digest stands for).
local own = stored_spec ~= nil and stored_digest == ARGV[3]
if stored_spec ~= nil and not own and (READ_ONLY or stored_rev >= caller_rev) then
  foreign = {}
  for _, id in ipairs(type(caller.members) == 'table' and caller.members or {}) do foreign[id] = true end
  -- lib/state.lua's load() creates the new state from ARGV[3] and ARGV[4]: the stored membership's.
  ARGV[3], ARGV[4] = stored_digest, stored_spec
elseif READ_ONLY and not own then
  -- A reader does not write its own configuration over the fleet's. It drops only the stamp (derived data,
  -- lib/state.lua), so that the next call of a worker takes the full path, meets the corruption and heals it.
  if old.checked ~= nil and check_acl({'HDEL', KEYS[1], 'checked'}) == nil then
    redis.call('HDEL', KEYS[1], 'checked')
  end
  return redis.error_reply('COORD_CORRUPT ' .. found)
end

local refused = check_acl({'DEL', KEYS[1], KEYS[2]})
if refused then return refused end
-- Scripts cannot roll back: DEL is the first write, and once a script has written, Redis (even out of
-- memory) lets it finish, so the state is replaced whole or not at all.
if replace_stream then redis.call('DEL', KEYS[1], KEYS[2]) else redis.call('DEL', KEYS[1]) end
local S, load_err = load()
if not S then return load_err end
if foreign then
  S.foreign = foreign
  local at = int_field(old, 'membership_at', nil)
  if at ~= nil and at <= S.now then S.set.membership_at = at end
end

local now = S.now
local kept, dropped = 0, 0
local function salvage_int(field, cap)
  if old[field] == nil then return 0 end
  local v = int_field(old, field, nil)
  if v == nil or v > cap then
    dropped = dropped + 1
    return 0
  end
  return v
end
for _, id in ipairs(S.ids) do
  local m = S.m[id]
  local any = false
  local cooling = salvage_int(id .. ':cooling_until', now + MAX_SPAN_MS)
  if cooling > now then
    m.cooling_until = cooling
    set_member(S, id, 'cooling_until', cooling)
    local kind = old[id .. ':cooling_kind']
    if kind ~= nil and KINDS[kind] then
      m.cooling_kind = kind
      set_member(S, id, 'cooling_kind', kind)
    end
    any = true
  end
  for _, name in ipairs({'failures', 'ejections'}) do
    local v = salvage_int(id .. ':' .. name, 1000000)
    if v > 0 then
      m[name] = v
      set_member(S, id, name, v)
      any = true
    end
  end
  -- When the last failure was counted ("Failure counts"): a deadline past now is capped at now.
  local failed_at = salvage_int(id .. ':failed_at', MAX_SPAN_MS * 30)
  if failed_at > now then failed_at = now end
  if failed_at > 0 and m.failures > 0 then
    m.failed_at = failed_at
    set_member(S, id, 'failed_at', failed_at)
  end
  local raw = old[id .. ':parked_until']
  local park = nil
  if raw == FOREVER then
    park = -1
  elseif raw ~= nil then
    local t = salvage_int(id .. ':parked_until', now + MAX_SPAN_MS)
    if t > now then park = t - now end
  end
  if park ~= nil then
    park_member(S, id, park, string.sub(old[id .. ':park_reason'] or '', 1, 200))
    any = true
  end
  if any then kept = kept + 1 end
end
local skip = salvage_int('skip_until', now + MAX_SPAN_MS)
if skip > now then
  S.skip_until = skip
  S.set.skip_until = skip
end

-- "nothing readable" (the old key was not a hash) tells the other workers to merge what they remember
-- (store.py, _origin); a readable state whose members were all at rest kept nothing and needs no merge.
local fields = {reason = 'corrupt state: ' .. string.sub(found, 1, 300) .. '; kept the state of ' .. kept ..
                         ' member(s)' .. (next(old) == nil and '; nothing readable' or '')}
if S.strategy ~= 'round_robin' then
  local previous = old.active
  local id = nil
  if previous ~= nil and S.pos[previous] ~= nil then
    id = available(S, previous) and previous or scan_from(S, S.pos[previous])
  else
    id = scan_from(S, 1)
  end
  set_active(S, id or (previous ~= nil and S.pos[previous] ~= nil and previous) or S.ids[1])
  fields.to = S.active
end
local none_available = not any_available(S)
if none_available then
  local _, t = soonest(S)
  fields.retry_at = t == math.huge and -1 or t
end
S.set.healed = now .. ' ' .. string.sub(found, 1, 300)
emit(S, 'healed', fields)
if none_available then exhaust(S, {member = S.active ~= '' and S.active or nil, reason = 'healed'}) end

commit(S)
return reply(S, {healed = true, found = found, previous_epoch = previous_epoch, kept = kept, dropped = dropped,
                 stream_replaced = replace_stream, transitioned = true})
