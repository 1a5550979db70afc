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
--   ARGV[6]  event stream cap (approximate MAXLEN, entries)
--   ARGV[7..] script-specific, see each file's header
--
-- All times are integer milliseconds of Redis server time (TIME). The script reads and validates the
-- whole state first, changes an in-memory copy, and writes everything at the end in `commit`, so a
-- corrupt state is reported before anything is written (Redis has no rollback).
--
-- Hash fields (human-readable on purpose, see README "Redis key schema"):
--   epoch generation version created strategy members weights digest active exhausted skip_until
--   rr probe, and per member <id>:cooling_until <id>:cooling_kind <id>:failures <id>:ejections
--   <id>:parked_until (ms or "forever") <id>:park_reason

local FOREVER = 'forever'
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

-- Strict parse of a non-negative integer field: tonumber() alone accepts "nan", "inf", "0x10",
-- " 12 ", "-5" and 400-digit strings (which become inf). No field is ever negative.
local function int_field(h, field, default)
  local v = h[field]
  if v == nil or v == false then return default end
  if type(v) ~= 'string' or #v > MAX_DIGITS or not string.match(v, '^%d+$') then return nil end
  return tonumber(v)
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

local function read_member(S, h, id)
  local m = {}
  m.cooling_until = int_field(h, id .. ':cooling_until', 0)
  m.failures = int_field(h, id .. ':failures', 0)
  m.ejections = int_field(h, id .. ':ejections', 0)
  if m.cooling_until == nil then return 'field ' .. id .. ':cooling_until is not an integer' end
  if m.failures == nil then return 'field ' .. id .. ':failures is not an integer' end
  if m.ejections == nil then return 'field ' .. id .. ':ejections is not an integer' end
  local parked = h[id .. ':parked_until']
  if parked == nil then
    m.parked_until = nil
  elseif parked == FOREVER then
    m.parked_until = math.huge
  else
    m.parked_until = int_field(h, id .. ':parked_until', nil)
    if m.parked_until == nil then return 'field ' .. id .. ':parked_until is neither an integer nor "forever"' end
  end
  m.park_reason = h[id .. ':park_reason'] or ''
  m.cooling_kind = h[id .. ':cooling_kind'] or ''
  S.m[id] = m
  return nil
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



-- Loads and validates the pool. Returns S, or nil plus a reply to send back unchanged.
local function load()
  -- One call per key; only a key of the wrong type costs a TYPE, to say which type it has.
  local flat = redis.pcall('HGETALL', KEYS[1])
  if flat.err then
    return nil, corrupt('has type ' .. redis.call('TYPE', KEYS[1]).ok .. ', expected hash')
  end
  -- XADD * can fail on a stream whose last id is absurdly far ahead (the id space ends), and that
  -- would be after the state hash was written. Scripts' own ids are server milliseconds.
  local last = redis.pcall('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if last.err then
    return nil, redis.error_reply('COORD_CORRUPT ' .. KEYS[2] .. ' has type ' ..
                                  redis.call('TYPE', KEYS[2]).ok .. ', expected stream')
  end
  if last[1] ~= nil and #(string.match(last[1][1], '^(%d+)') or '') > MAX_DIGITS then
    return nil, redis.error_reply('COORD_CORRUPT ' .. KEYS[2] .. ' holds an entry id far in the future')
  end
  local t1 = (#flat == 0) and 'none' or 'hash'
  local S = {now = now_ms(), set = {}, del = {}, events = {}, changed = false, created = false, m = {}}
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  local spec_json = ARGV[4]
  local digest = ARGV[3]

  if t1 == 'none' then
    if spec_json == '' then return nil, NEED_SPEC end
  else
    if h.epoch == nil or h.epoch == '' then return nil, corrupt('has no epoch') end
    -- The epoch travels in change notices "<pool> <epoch> <generation> <version>" and in tokens.
    if #h.epoch > 64 or not string.match(h.epoch, '^[%w%._:%-]+$') then
      return nil, corrupt('field epoch is not a valid epoch')
    end
    S.epoch = h.epoch
    S.generation = int_field(h, 'generation', nil)
    S.version = int_field(h, 'version', nil)
    S.rr = int_field(h, 'rr', 0)
    S.skip_until = int_field(h, 'skip_until', 0)
    S.created_at = int_field(h, 'created', 0)
    if S.generation == nil then return nil, corrupt('field generation is not an integer') end
    if S.version == nil then return nil, corrupt('field version is not an integer') end
    if S.rr == nil then return nil, corrupt('field rr is not an integer') end
    if S.skip_until == nil then return nil, corrupt('field skip_until is not an integer') end
    if S.created_at == nil then return nil, corrupt('field created is not an integer') end
    S.strategy = h.strategy
    if not STRATEGIES[S.strategy or ''] then return nil, corrupt('field strategy is not a known strategy') end
    local ids = split_csv(h.members)
    local weights = split_csv(h.weights)
    local problem = bad_membership(ids, weights)
    if problem then return nil, corrupt(problem) end
    set_members(S, ids, weights)
    for _, id in ipairs(ids) do
      local problem = read_member(S, h, id)
      if problem then return nil, corrupt(problem) end
    end
    S.active = h.active or ''
    if S.active ~= '' and S.pos[S.active] == nil then return nil, corrupt('field active names no member') end
    if S.strategy ~= 'round_robin' and S.active == '' then return nil, corrupt('field active is empty') end
    if h.exhausted ~= nil and h.exhausted ~= '0' and h.exhausted ~= '1' then
      return nil, corrupt('field exhausted is neither 0 nor 1')
    end
    S.exhausted = h.exhausted == '1'
    S.probe = h.probe or ''
    S.digest = h.digest or ''
    if digest ~= '*' and S.digest ~= digest and spec_json == '' then return nil, NEED_SPEC end
  end

  if spec_json ~= '' and (t1 == 'none' or S.digest ~= digest) then
    -- New pool, or the workers' configuration changed its members or strategy.
    local ok, spec = pcall(cjson.decode, spec_json)
    if not ok or type(spec) ~= 'table' or type(spec.members) ~= 'table' or #spec.members == 0
        or not STRATEGIES[spec.strategy or ''] then
      return nil, redis.error_reply('COORD_BAD_ARGUMENT membership spec is not valid')
    end
    local old_ids = S.ids or {}
    set_members(S, spec.members, spec.weights or {})
    for _, id in ipairs(old_ids) do
      if S.pos[id] == nil then
        for _, suffix in ipairs({':cooling_until', ':cooling_kind', ':failures', ':ejections',
                                 ':parked_until', ':park_reason'}) do
          S.del[id .. suffix] = true
        end
      end
    end
    for _, id in ipairs(S.ids) do
      if S.m[id] == nil then S.m[id] = {cooling_until = 0, failures = 0, ejections = 0, park_reason = '', cooling_kind = ''} end
    end
    S.strategy = spec.strategy
    S.digest = digest
    S.set.strategy = S.strategy
    S.set.members = table.concat(S.ids, ',')
    local w = {}
    for i, id in ipairs(S.ids) do w[i] = tostring(S.weights[id]) end
    S.set.weights = table.concat(w, ',')
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
  if value == nil or value == '' or value == 0 then
    S.del[field] = true
    S.set[field] = nil
  else
    S.set[field] = value
    S.del[field] = nil
  end
  S.changed = true
end
