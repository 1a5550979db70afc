-- acquire.lua: choose the member a request should use.
--
-- KEYS[1] pool state hash, KEYS[2] pool event stream
-- ARGV[1..6] common (see lib/state.lua)
-- ARGV[7]  lease id: random string, becomes the probe lease if this caller is granted a probe
-- ARGV[8]  probe lease time to live, ms (priority strategy)
-- ARGV[9]  failback_after, ms: how long a lower member must have been out of cooldown before a probe
-- ARGV[10] "1": an exhausted pool recovers through one probe (the caller can use another pool of its
--          chain meanwhile); absent or "": through the first acquire, as before
--
-- Writes only on a transition (pointer moved, exhausted, recovered), a granted probe lease, or the
-- round-robin cursor. Reply (JSON): common fields plus
--   member      chosen member id ("" when every member is parked forever)
--   degraded    true when the pool is exhausted and `member` is the soonest to recover
--   retry_at    ms when `member` recovers (degraded), else -1
--   lease       probe lease id when this caller holds the pool's half-open probe, else ""; a caller of
--               another configuration (foreign) is granted one only on a member its configuration has
--   probing     true when the pool is exhausted but a member is back and another caller probes it;
--               `member` is that member, `degraded` is true, `retry_at` when to ask again
--   transitioned true when this call made a transition
--   valid_until  ms until which this decision holds unless a write (and its change notice) intervenes:
--                the worker may serve later acquires from it locally; 0 means ask again every time
--   rotation     round_robin: the available members as "id:weight,id:weight"
--   dirty        members whose ejection counts are not zero ("a,b"): their successes must be
--                reported; for the others a success changes nothing (a failure count restarts with
--                the next failure report, see report_failure.lua)
--   states       (absent when empty) members not in their default state, each
--                [id, cooling_until ms, cooling_kind, failures, ejections, parked_until ms (-1 until
--                unparked, 0 not parked), park_reason]: the worker's fallback if Redis goes away

local S, err = load()
if not S then return err end
settle_pointer(S)
local lease_id, probe_ttl, failback_after = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local gated = ARGV[10] == '1'
-- Whether this caller holds member `id`: a probe lease is granted only on a member it can use.
local function holds(id) return not S.foreign or S.foreign[id] == true end
local transitioned = false
local member, degraded, retry_at, lease, probing = '', false, -1, '', false

-- Chain recovery (docs/design.md, "Timeouts and streams"): the pool stays exhausted while one caller,
-- fleet-wide, sends one real request to the member that is back; its success writes `recovered`
-- (report_success.lua), its failure cools the member again, escalated (report_failure.lua).
if gated and S.exhausted and S.strategy ~= 'round_robin' and any_available(S) then
  local to = S.active
  if not available(S, to) then to = successor(S) or scan_from(S, 1) end
  local expires = tonumber(string.match(S.probe, '|(%d+)$')) or 0
  if not holds(to) then
    -- A caller of another configuration (lib/membership.lua) cannot probe a member it has no secret for.
    member, degraded, retry_at = to, true, S.now + 1000
  elseif expires <= S.now then
    S.probe = to .. '|' .. lease_id .. '|' .. (S.now + probe_ttl)
    S.set.probe = S.probe
    S.changed = true
    member, lease = to, lease_id
  else
    member, degraded, probing = to, true, true
    retry_at = math.min(expires, S.now + 1000)
  end
-- Leave an exhausted episode as soon as anything can serve again.
elseif S.exhausted and any_available(S) then
  set_exhausted(S, false)
  local to = S.active
  if S.strategy ~= 'round_robin' and not available(S, S.active) then
    to = successor(S)
    set_active(S, to)
  end
  emit(S, 'recovered', {to = to})
  transitioned = true
end

if member ~= '' then
  -- a probe granted or held above: nothing more to choose
elseif not any_available(S) then
  if exhaust(S, {member = S.active}) then transitioned = true end
  local id, t = soonest(S)
  if t ~= math.huge then
    member, degraded, retry_at = id, true, t
  end
elseif S.strategy == 'round_robin' then
  local total = 0
  for _, id in ipairs(S.ids) do
    if available(S, id) then total = total + S.weights[id] end
  end
  -- The cursor only spreads load; it is not state anyone reads, so it changes no version.
  local slot = S.rr % total
  S.rr = S.rr + 1
  redis.call('HSET', KEYS[1], 'rr', S.rr)
  for _, id in ipairs(S.ids) do
    if available(S, id) then
      if slot < S.weights[id] then member = id break end
      slot = slot - S.weights[id]
    end
  end
else
  if not available(S, S.active) then
    local reason = 'cooling'
    if ready_at(S, S.active) > 0 and S.m[S.active].parked_until ~= nil and S.m[S.active].parked_until > S.now then
      reason = 'parked'
    end
    advance(S, 'failover', {reason = reason})
    transitioned = true
  end
  member = S.active
  if S.strategy == 'priority' and not is_first(S, S.active) then
    local expires = tonumber(string.match(S.probe, '|(%d+)$')) or 0
    if expires <= S.now then
      for i = 1, S.pos[S.active] - 1 do
        local id = S.ids[i]
        if available(S, id) and holds(id) and S.now >= S.m[id].cooling_until + failback_after then
          S.probe = id .. '|' .. lease_id .. '|' .. (S.now + probe_ttl)
          S.set.probe = S.probe
          S.changed = true
          member, lease = id, lease_id
          break
        end
      end
    end
  end
end

-- How long this answer stays right by time alone. Sticky: until a write (cooldowns only lapse, and a
-- lapse never moves a sticky pointer). Priority: until a lower member may be probed. Round robin:
-- until a cooling member rejoins the rotation. Degraded answers and probes are never reused.
local valid_until, rotation = 0, {}
if member ~= '' and not degraded and lease == '' then
  valid_until = S.now + 86400000
  if S.strategy == 'round_robin' then
    for _, id in ipairs(S.ids) do
      local t = ready_at(S, id)
      if t == 0 then
        rotation[#rotation + 1] = id .. ':' .. S.weights[id]
      elseif t < valid_until then
        valid_until = t
      end
    end
  elseif S.strategy == 'priority' and not is_first(S, S.active) then
    for i = 1, S.pos[S.active] - 1 do
      local id = S.ids[i]
      local t = math.max(ready_at(S, id), S.m[id].cooling_until + failback_after)
      if t <= S.now then t = tonumber(string.match(S.probe, '|(%d+)$')) or S.now end
      if t < valid_until then valid_until = t end
    end
  end
end
-- Members whose state is not the default: what the worker falls back on if Redis becomes unreachable,
-- and which successes are worth reporting.
local dirty, states = {}, {}
for _, id in ipairs(nondefault_ids(S)) do
  local m = S.m[id]
  if m.ejections > 0 then dirty[#dirty + 1] = id end
  if m.failures > 0 or m.ejections > 0 or m.cooling_until > S.now or m.parked_until ~= nil then
    local parked = m.parked_until or 0
    if parked == math.huge then parked = -1 end
    states[#states + 1] = {id, m.cooling_until, m.cooling_kind, m.failures, m.ejections, parked, m.park_reason}
  end
end

commit(S)
local out = {member = member, degraded = degraded, retry_at = retry_at, lease = lease, probing = probing,
             transitioned = transitioned, valid_until = valid_until,
             rotation = table.concat(rotation, ','), dirty = table.concat(dirty, ',')}
if #states > 0 then out.states = states end
return reply(S, out)
