-- lib/state.lua: loading and validating a pool's state. The Python loader (coordinator/store/scripts.py)
-- prepends lib/state.lua, lib/rules.lua and lib/commit.lua, in that order, to every script of lua/.
--
-- Common layout of every script:
--   KEYS[1]  pool state hash      e.g. coord:{openai}
--   KEYS[2]  pool event stream    e.g. coord:{openai}:events
--   ARGV[1]  change-notice channel (PUBLISH target; not a key); notices read
--            "<pool> <epoch> <generation> <version> <active or -> <dirty members or ->"
--   ARGV[2]  pool name
--   ARGV[3]  membership digest (hex) of strategy + member ids + weights; "*" accepts any (read-only)
--   ARGV[4]  membership spec as JSON {"strategy":..,"members":[..],"weights":[..]}, or "" when the
--            caller hopes the stored digest matches (reply {"need_spec":true} when it does not)
--   ARGV[5]  random nonce: the epoch of the state if this call has to create it
--   ARGV[6]  event retention: "<entries>" or "<entries> <max age ms>" (approximate MAXLEN, then MINID)
--   ARGV[7..] script-specific, see each file's header
--
-- All times are integer milliseconds of Redis server time (TIME). The script reads and validates the
-- state first, changes an in-memory copy, and writes everything at the end in `commit`, so a
-- corrupt state is reported before anything is written (Redis has no rollback).
--
-- What a call reads does not grow with the pool (docs/design.md, "Scripts"): the header fields, then
-- only the members the index field `nondefault` names plus the active one. The membership (members,
-- weights, strategy) is validated in full only when the stamp field `checked` (written with every
-- state a script validated: "<version> <digest> <strategy> <members> <weights>") does not match it: a
-- new digest, a state of an older release, a write by another release (its version moved on), or a
-- hand edit. What the fast path trusts is what scripts wrote: a member outside the index is in its
-- default state, and a hand edit of such a member's fields (which moves no version) is seen by
-- snapshot, which always takes the full path, not by the calls that trust the index.
--
-- Hash fields (human-readable on purpose, see README "Redis key schema"):
--   epoch generation version created strategy members weights digest active exhausted skip_until
--   rr probe, and per member <id>:cooling_until <id>:cooling_kind <id>:failures <id>:ejections
--   <id>:parked_until (ms or "forever") <id>:park_reason; checked, nondefault (see above: derived
--   data, rebuilt from the rest by the full path, never read by older releases)

local FOREVER = 'forever'
-- Whether a configuration's membership may not replace the stored one (lib/membership.lua fills it in).
local keeps_stored_membership
local STRATEGIES = {sticky = true, priority = true, round_robin = true}
local NEED_SPEC = '{"need_spec":true}'
-- Lua numbers are doubles and tostring() prints only 14 significant digits: a longer integer would
-- be written back as "1e+14" and then be unreadable. Integer fields are read only up to 13 digits, so
-- a counter incremented by a script still prints exactly; deadlines (ms) have 13 digits until the
-- year 2286, and spans are capped at 100 years so that every deadline a script writes stays readable.
local MAX_DIGITS = 13
local MAX_SPAN_MS = 100 * 365 * 86400000
-- Member ids as the Python config admits them (coordinator._config.ID_PATTERN).
local ID_PATTERN = '^[%w][%w%._@%+%-]*$'
local MAX_ID_LENGTH = 128
local MAX_WEIGHT = 1000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function corrupt(what)
  return redis.error_reply('COORD_CORRUPT ' .. KEYS[1] .. ' ' .. what)
end

-- Strict parse of a non-negative integer value: tonumber() alone accepts "nan", "inf", "0x10",
-- " 12 ", "-5" and 400-digit strings (which become inf). No field is ever negative. `v` is a field's
-- value as HMGET (false when absent) or a field map (nil) gives it.
local function int_value(v, default)
  if not v then return default end
  if type(v) ~= 'string' or #v > MAX_DIGITS or not string.match(v, '^%d+$') then return nil end
  return tonumber(v)
end

local function int_field(h, field, default)
  return int_value(h[field], default)
end

-- Why the stored membership (ids and weights) cannot be used, or nil when it can.
local function bad_membership(ids, weights)
  if #ids == 0 then return 'field members is empty' end
  if #weights ~= #ids then return 'field weights does not match field members' end
  local seen = {}
  for i, id in ipairs(ids) do
    if #id > MAX_ID_LENGTH or not string.match(id, ID_PATTERN) then
      return 'field members holds an invalid member id'
    end
    if seen[id] then return 'field members names ' .. id .. ' twice' end
    seen[id] = true
    local w = weights[i]
    if #w > 4 or not string.match(w, '^%d+$') or tonumber(w) < 1 or tonumber(w) > MAX_WEIGHT then
      return 'field weights holds a weight that is not an integer from 1 to ' .. MAX_WEIGHT
    end
  end
  return nil
end

local function split_csv(s)
  local out = {}
  if s == nil or s == '' then return out end
  for part in string.gmatch(s, '[^,]+') do out[#out + 1] = part end
  return out
end

-- parse_member takes a member's values in this order.
local MEMBER_SUFFIXES = {':cooling_until', ':failures', ':ejections', ':parked_until', ':park_reason',
                         ':cooling_kind', ':failed_at'}

local function default_member()
  return {cooling_until = 0, failures = 0, ejections = 0, park_reason = '', cooling_kind = '', failed_at = 0}
end

-- Parses member `id` from its field values (in MEMBER_SUFFIXES order; false or nil when absent) into
-- S.m. A field that is not readable leaves the default in its place and returns the problem: nothing
-- is written once S.problem is set (see commit).
local function parse_member(S, id, cooling_until, failures, ejections, parked, park_reason, cooling_kind,
                            failed_at)
  -- When the last failure was counted (docs/design.md, "Failure counts"). Only ever restarts a count,
  -- so a field that is not readable (or absent: a count of an older release) counts as 0.
  local m = {cooling_until = int_value(cooling_until, 0), failures = int_value(failures, 0),
             ejections = int_value(ejections, 0), parked_until = nil, park_reason = park_reason or '',
             cooling_kind = cooling_kind or '', failed_at = int_value(failed_at, 0) or 0}
  S.m[id] = m
  local problem = nil
  if m.cooling_until == nil then problem = 'field ' .. id .. ':cooling_until is not an integer' end
  if m.failures == nil then problem = problem or 'field ' .. id .. ':failures is not an integer' end
  if m.ejections == nil then problem = problem or 'field ' .. id .. ':ejections is not an integer' end
  if problem then
    m.cooling_until, m.failures, m.ejections = m.cooling_until or 0, m.failures or 0, m.ejections or 0
  end
  if parked == FOREVER then
    m.parked_until = math.huge
  elseif parked then
    m.parked_until = int_value(parked, nil)
    if m.parked_until == nil then
      problem = problem or ('field ' .. id .. ':parked_until is neither an integer nor "forever"')
    end
  end
  return problem
end

-- Reads member `id` from the field map `h` (see parse_member).
local function read_member(S, h, id)
  return parse_member(S, id, h[id .. ':cooling_until'], h[id .. ':failures'], h[id .. ':ejections'],
                      h[id .. ':parked_until'], h[id .. ':park_reason'], h[id .. ':cooling_kind'],
                      h[id .. ':failed_at'])
end

local function set_members(S, ids, weights)
  S.ids = ids
  S.pos = {}
  S.weights = {}
  for i, id in ipairs(ids) do
    S.pos[id] = i
    S.weights[id] = tonumber(weights[i]) or 1
  end
end

-- The fast path (docs/design.md, "Scripts"): S.ids, S.pos and S.weights cost a split of the whole
-- membership, so they are built only when a call first needs them (a scan, a rotation, a snapshot).
local LAZY = {ids = true, pos = true, weights = true}
local LAZY_STATE = {__index = function(S, k)
  if not LAZY[k] then return nil end
  if rawget(S, 'members_csv') == nil then
    -- Reading the membership is what costs on a large pool (Redis hands Lua every byte of it), so
    -- the fast path reads it only here, trusting the stamp's validation of it.
    local v = redis.call('HMGET', KEYS[1], 'members', 'weights')
    S.members_csv, S.weights_csv = v[1] or '', v[2] or ''
  end
  set_members(S, split_csv(S.members_csv), split_csv(S.weights_csv))
  return rawget(S, k)
end}
-- On the fast path only the members the index names (and the active one) are read: every other
-- member is in its default state, by the index's definition.
local DEFAULT_MEMBERS = {__index = function(t, id)
  local m = default_member()
  rawset(t, id, m)
  return m
end}

-- Whether `id` is a member: the active member and the indexed ones are (the stamp vouches for them),
-- any other id costs the membership's split.
local function has_member(S, id)
  if type(id) ~= 'string' or id == '' then return false end
  local pos = rawget(S, 'pos')
  if pos then return pos[id] ~= nil end
  if id == S.active or (S.fast and rawget(S.m, id) ~= nil) then return true end
  return S.pos[id] ~= nil
end

-- Whether `id` is the first member, without splitting the membership (the stamp names the first).
local function is_first(S, id)
  local pos = rawget(S, 'pos')
  if pos then return pos[id] == 1 end
  return id == S.first
end

-- Whether a member is worth indexing: anything but the default state, and a cooldown for a day after
-- it ended (a priority pool's failback waits `failback_after` past the end of a cooldown).
local INDEX_KEEP_MS = 86400000
local function nondefault(S, m)
  return m.failures > 0 or m.ejections > 0 or m.parked_until ~= nil or
         (m.cooling_until > 0 and m.cooling_until + INDEX_KEEP_MS > S.now)
end

-- The members not in their default state, from the members this call read (the index, the active
-- member, those it changed); in pool order when the membership was split, else in index order.
local function nondefault_ids(S)
  local out = {}
  local ids = rawget(S, 'ids')
  if ids then
    for _, id in ipairs(ids) do
      local m = rawget(S.m, id)
      if m and nondefault(S, m) then out[#out + 1] = id end
    end
    return out
  end
  local seen = {}
  for _, id in ipairs(S.index) do
    local m = rawget(S.m, id)
    if m and not seen[id] and nondefault(S, m) then out[#out + 1] = id end
    seen[id] = true
  end
  for id, m in pairs(S.m) do
    if not seen[id] and nondefault(S, m) then out[#out + 1] = id end
  end
  return out
end

-- The stamp a script writes with every state it validated: "<version> <digest> <strategy> <length of
-- members> <length of weights> <active or -> <first member>". While it matches (the lengths by
-- HSTRLEN, O(1)), the next call skips the membership's validation, does not even read it, and reads
-- only the members the index names; any write by another script version (a rolling deploy) moves the
-- version and so sends the next call down the full path, which rebuilds the index.
local function stamp(S)
  local ids = rawget(S, 'ids')
  local first = ids and ids[1] or S.first
  local mlen = rawget(S, 'members_csv') and #S.members_csv or S.mlen
  local wlen = rawget(S, 'weights_csv') and #S.weights_csv or S.wlen
  local active = S.active ~= '' and S.active or '-'
  return S.version .. ' ' .. S.digest .. ' ' .. S.strategy .. ' ' .. mlen .. ' ' .. wlen .. ' ' .. active .. ' ' .. first
end

-- load_fast reads these by their position in this list.
local HEADER = {'epoch', 'generation', 'version', 'created', 'strategy', 'digest', 'active', 'exhausted',
                'skip_until', 'rr', 'probe', 'checked', 'nondefault'}

-- Reads the members `ids` (one HMGET for many) into S.m, parsing the values where they stand in the
-- reply (the fast path's common case is one or two members: no field map).
local NSUFFIXES = #MEMBER_SUFFIXES
local function fetch_members(S, ids)
  local per_call = math.floor(600 / NSUFFIXES)
  for first = 1, #ids, per_call do
    local last = math.min(first + per_call - 1, #ids)
    local fields = {}
    for k = first, last do
      local id = ids[k]
      for _, suffix in ipairs(MEMBER_SUFFIXES) do fields[#fields + 1] = id .. suffix end
    end
    local v = redis.call('HMGET', KEYS[1], unpack(fields))
    for k = first, last do
      local o = (k - first) * NSUFFIXES
      local problem = parse_member(S, ids[k], v[o + 1], v[o + 2], v[o + 3], v[o + 4], v[o + 5], v[o + 6], v[o + 7])
      if problem then S.problem = S.problem or problem end
    end
  end
end

-- The header fields every call validates (a handful of fields, whatever the pool's size).
local function read_header(S, h)
  if h.epoch == nil or h.epoch == '' then return 'has no epoch' end
  -- The epoch travels in change notices "<pool> <epoch> <generation> <version>" and in tokens.
  if #h.epoch > 64 or not string.match(h.epoch, '^[%w%._:%-]+$') then return 'field epoch is not a valid epoch' end
  S.epoch = h.epoch
  S.generation_read = h.generation
  S.generation = int_field(h, 'generation', nil)
  S.version = int_field(h, 'version', nil)
  S.rr = int_field(h, 'rr', 0)
  S.skip_until = int_field(h, 'skip_until', 0)
  S.created_at = int_field(h, 'created', 0)
  if S.generation == nil then return 'field generation is not an integer' end
  if S.version == nil then return 'field version is not an integer' end
  if S.rr == nil then return 'field rr is not an integer' end
  if S.skip_until == nil then return 'field skip_until is not an integer' end
  if S.created_at == nil then return 'field created is not an integer' end
  S.strategy = h.strategy
  if not STRATEGIES[S.strategy or ''] then return 'field strategy is not a known strategy' end
  S.active = h.active or ''
  if S.strategy ~= 'round_robin' and S.active == '' then return 'field active is empty' end
  if h.exhausted ~= nil and h.exhausted ~= '0' and h.exhausted ~= '1' then
    return 'field exhausted is neither 0 nor 1'
  end
  S.exhausted = h.exhausted == '1'
  S.probe = h.probe or ''
  S.digest = h.digest or ''
  if h.members ~= nil then S.members_csv, S.weights_csv = h.members, h.weights or '' end
  S.old_checked = h.checked
  S.old_index = h.nondefault or ''
  return nil
end

local function new_state()
  local S = {now = now_ms(), set = {}, del = {}, events = {}, changed = false, created = false, m = {}, index = {}}
  setmetatable(S, LAZY_STATE)
  return S
end

-- The common path: the header and the members the index names, when the stamp vouches for the rest.
-- Returns S; nil to take the full path; or nil and the reply for a member field that is not readable.
local function load_fast()
  local ok, v = pcall(redis.call, 'HMGET', KEYS[1], unpack(HEADER))
  if not ok or not v[1] or not v[12] then return nil end
  -- The field map read_header takes, by position in HEADER (an absent field is nil, as in HGETALL's).
  local h = {epoch = v[1], generation = v[2] or nil, version = v[3] or nil, created = v[4] or nil,
             strategy = v[5] or nil, digest = v[6] or nil, active = v[7] or nil, exhausted = v[8] or nil,
             skip_until = v[9] or nil, rr = v[10] or nil, probe = v[11] or nil, checked = v[12],
             nondefault = v[13] or nil}
  local S = new_state()
  if read_header(S, h) ~= nil then return nil end
  S.mlen = redis.call('HSTRLEN', KEYS[1], 'members')
  S.wlen = redis.call('HSTRLEN', KEYS[1], 'weights')
  -- The stamp (see stamp()) is what this call would write followed by the first member's id.
  local checked = h.checked
  local prefix = S.version .. ' ' .. S.digest .. ' ' .. S.strategy .. ' ' .. S.mlen .. ' ' .. S.wlen .. ' ' ..
                 (S.active ~= '' and S.active or '-') .. ' '
  if #checked <= #prefix or string.sub(checked, 1, #prefix) ~= prefix then return nil end
  S.first = string.sub(checked, #prefix + 1)
  if string.find(S.first, '%s') then return nil end
  S.fast = true
  setmetatable(S.m, DEFAULT_MEMBERS)
  local index, has_active = S.index, S.active == ''
  for id in string.gmatch(S.old_index, '[^,]+') do
    index[#index + 1] = id
    if id == S.active then has_active = true end
  end
  local read = index
  if not has_active then
    read = {unpack(index)}
    read[#read + 1] = S.active
  end
  fetch_members(S, read)
  if S.problem then return nil, corrupt(S.problem) end
  return S
end

-- Loads and validates the pool. Returns S, or nil plus a reply to send back unchanged. `full` reads
-- and validates every member whatever the stamp says (snapshot: an operator's view is the whole truth).
-- Members whose successes must be reported, as a set: those with an ejection count to decay
-- (docs/design.md, "Failure counts"). A failure count needs no success report: the next failure
-- report says whether its worker served since, and restarts the count.
local function dirty_set(S)
  -- Every member with an ejection count is in its non-default state, so the members read are enough.
  local out = {}
  for id, m in pairs(S.m) do
    if m.ejections > 0 then out[id] = true end
  end
  return out
end

local load_state
local function load(full)
  local S, err = load_state(full)
  if S then S.dirty_before = dirty_set(S) end
  return S, err
end

function load_state(full)
  local spec_json = ARGV[4]
  local digest = ARGV[3]
  if not full and (digest == '*' or spec_json == '') then
    local S, err = load_fast()
    if err then return nil, err end
    if S then
      if digest ~= '*' and S.digest ~= digest then return nil, NEED_SPEC end
      return S, nil
    end
  end
  -- The full path: one call per key; only a key of the wrong type costs a TYPE, to say which type it has.
  local flat = redis.pcall('HGETALL', KEYS[1])
  if flat.err then
    return nil, corrupt('has type ' .. redis.call('TYPE', KEYS[1]).ok .. ', expected hash')
  end
  local t1 = (#flat == 0) and 'none' or 'hash'
  local S = new_state()
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end

  if t1 == 'none' then
    if spec_json == '' then return nil, NEED_SPEC end
  else
    local problem = read_header(S, h)
    if problem then return nil, corrupt(problem) end
    -- Counted in C before anything is split: a huge hand-edited list fails without a long loop.
    local _, commas = string.gsub(h.members or '', ',', ',')
    local _, weight_commas = string.gsub(h.weights or '', ',', ',')
    if commas ~= weight_commas then return nil, corrupt('field weights does not match field members') end
    local ids = split_csv(h.members)
    local weights = split_csv(h.weights)
    problem = bad_membership(ids, weights)
    if problem then return nil, corrupt(problem) end
    set_members(S, ids, weights)
    for _, id in ipairs(ids) do
      problem = read_member(S, h, id)
      if problem then return nil, corrupt(problem) end
    end
    if S.active ~= '' and S.pos[S.active] == nil then return nil, corrupt('field active names no member') end
    if digest ~= '*' and S.digest ~= digest and spec_json == '' then return nil, NEED_SPEC end
    -- A state last written by a script without the stamp (an older release) or by another release
    -- since (its version moved on) is stamped now that it passed; a stamp of this very version that
    -- does not match was edited by hand: it keeps the full path until the next write.
    local stamped = string.match(S.old_checked or '', '^(%d+) ')
    S.bless = stamped == nil or stamped ~= tostring(S.version)
  end

  if spec_json ~= '' and (t1 == 'none' or S.digest ~= digest) then
    -- New pool, or the workers' configuration changed its members or strategy.
    local ok, spec = pcall(cjson.decode, spec_json)
    if not ok or type(spec) ~= 'table' or type(spec.members) ~= 'table' or #spec.members == 0
        or not STRATEGIES[spec.strategy or ''] then
      return nil, redis.error_reply('COORD_BAD_ARGUMENT membership spec is not valid')
    end
    if keeps_stored_membership(S, h, spec, t1 == 'none') then return S, nil end
    local old_ids = rawget(S, 'ids') or {}
    set_members(S, spec.members, spec.weights or {})
    for _, id in ipairs(old_ids) do
      if S.pos[id] == nil then
        S.m[id] = nil
        for _, suffix in ipairs(MEMBER_SUFFIXES) do S.del[id .. suffix] = true end
      end
    end
    for _, id in ipairs(S.ids) do
      if S.m[id] == nil then S.m[id] = default_member() end
    end
    S.strategy = spec.strategy
    S.digest = digest
    S.set.strategy = S.strategy
    S.members_csv = table.concat(S.ids, ',')
    S.set.members = S.members_csv
    local w = {}
    for i, id in ipairs(S.ids) do w[i] = tostring(S.weights[id]) end
    S.weights_csv = table.concat(w, ',')
    S.set.weights = S.weights_csv
    S.set.digest = digest
    S.changed = true
    if t1 == 'none' then
      S.created = true
      S.epoch = ARGV[5]
      S.generation = 0
      S.version = 0
      S.rr = 0
      S.skip_until = 0
      S.created_at = S.now
      S.exhausted = false
      S.probe = ''
      S.active = ''
      S.set.epoch = S.epoch
      S.set.created = S.now
    end
  end
  return S, nil
end


local function set_member(S, id, suffix, value)
  local field = id .. ':' .. suffix
  -- What commit's decisive() asks of a member's fields: was a deadline written, and whose.
  if suffix == 'parked_until' then
    S.parks = true
  elseif suffix == 'cooling_until' then
    S.cools = S.cools or {}
    S.cools[id] = true
  end
  if value == nil or value == '' or value == 0 then
    S.del[field] = true
    S.set[field] = nil
  else
    S.set[field] = value
    S.del[field] = nil
  end
  S.changed = true
end
