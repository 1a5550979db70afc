-- lib/rules.lua: the pool rules (docs/design.md, "Strategies", "Cooldown length"): who can serve, where the
-- pointer goes, exhausted episodes, probes and parks. Works on the in-memory state S that load() returned.

-- Milliseconds at which the member can serve again: 0 when it can now, math.huge when parked forever.
local function ready_at(S, id)
  local m = S.m[id]
  local t = 0
  if m.cooling_until > S.now then t = m.cooling_until end
  if m.parked_until ~= nil and m.parked_until > S.now and m.parked_until > t then t = m.parked_until end
  return t
end

local function available(S, id)
  return S.skip_until <= S.now and ready_at(S, id) == 0
end

-- First available member scanning forward from position `from` (inclusive), wrapping; nil if none.
local function scan_from(S, from)
  local n = #S.ids
  for k = 0, n - 1 do
    local id = S.ids[((from - 1 + k) % n) + 1]
    if available(S, id) then return id end
  end
  return nil
end

-- Where the pointer goes when the active member stops serving: sticky moves forward and wraps,
-- priority prefers the lowest position. Never the current active member.
local function successor(S)
  if S.strategy == 'priority' then
    local id = scan_from(S, 1)
    if id ~= S.active then return id end
    return nil
  end
  local id = scan_from(S, S.pos[S.active] + 1)
  if id == S.active then return nil end
  return id
end

local function any_available(S)
  if S.skip_until > S.now then return false end
  -- The usual answer without a scan (a scan splits the whole membership).
  if S.active ~= '' and ready_at(S, S.active) == 0 then return true end
  return scan_from(S, 1) ~= nil
end

-- The degraded choice: the member that recovers soonest, never one parked forever.
local function soonest(S)
  local best, best_t = nil, math.huge
  for _, id in ipairs(S.ids) do
    local t = ready_at(S, id)
    if t < best_t then best, best_t = id, t end
  end
  if best ~= nil and S.skip_until > S.now and S.skip_until > best_t then best_t = S.skip_until end
  return best, best_t
end

local function emit(S, kind, fields)
  S.generation = S.generation + 1
  fields.type = kind
  fields.generation = S.generation
  S.events[#S.events + 1] = fields
  S.changed = true
end

local function set_active(S, id)
  S.active = id
  S.set.active = id
  S.changed = true
end

local function set_exhausted(S, flag)
  S.exhausted = flag
  if flag then S.set.exhausted = '1' else S.set.exhausted = '0' end
  S.changed = true
end

-- Enter an exhausted episode: one event per episode. Returns true when this call started it.
local function exhaust(S, fields)
  if S.exhausted then return false end
  set_exhausted(S, true)
  if fields.retry_at == nil then
    local _, t = soonest(S)
    if t == math.huge then t = -1 end
    fields.retry_at = t
  end
  emit(S, 'exhausted', fields)
  return true
end

-- After the active member stopped serving (cooled, parked, rotated): move the pointer, or declare
-- the pool exhausted once per episode. `kind` names the event for a pointer move; with `always` that
-- event is written even when there is nowhere to move (an operator action is always an event).
-- Returns true when this call made a transition.
local function advance(S, kind, fields, always)
  local next_id = successor(S)
  if next_id ~= nil then
    fields.from = S.active
    fields.to = next_id
    set_active(S, next_id)
    emit(S, kind, fields)
    return true
  end
  if always then emit(S, kind, fields) end
  return exhaust(S, {member = S.active, reason = fields.reason, kind = fields.kind}) or always
end


-- Clears the half-open probe lease when `lease` holds it. Returns true when it did.
local function release_probe(S, lease)
  if lease == '' or S.probe == '' or string.match(S.probe, '^[^|]*|([^|]*)|') ~= lease then
    return false
  end
  S.probe = ''
  S.set.probe = nil
  S.del.probe = true
  S.changed = true
  return true
end

-- Parks `id` for `duration` ms (-1: until unparked).
local function park_member(S, id, duration, reason)
  local m = S.m[id]
  if duration > MAX_SPAN_MS then duration = MAX_SPAN_MS end
  if duration < 0 then m.parked_until = math.huge else m.parked_until = S.now + duration end
  set_member(S, id, 'parked_until', m.parked_until == math.huge and FOREVER or m.parked_until)
  set_member(S, id, 'park_reason', reason)
  m.park_reason = reason
end


-- A freshly created (or reconfigured) pool whose pointer is unset or gone gets one now.
local function settle_pointer(S)
  if S.strategy == 'round_robin' then
    if S.active ~= '' then set_active(S, '') end
    return
  end
  if S.active ~= '' and has_member(S, S.active) then return end
  local previous = S.active
  local id = scan_from(S, 1) or S.ids[1]
  set_active(S, id)
  if S.created then
    emit(S, 'created', {to = id})
  else
    emit(S, 'reconfigured', {from = previous, to = id})
  end
end

local function cooldown_ms(base, multiplier, ejections, hint, min_ms, max_ms)
  local d
  if hint >= 0 then
    d = hint
  else
    d = base * (multiplier ^ ejections)
  end
  if d < min_ms then d = min_ms end
  if d > max_ms then d = max_ms end
  if d > MAX_SPAN_MS then d = MAX_SPAN_MS end
  return math.floor(d)
end
