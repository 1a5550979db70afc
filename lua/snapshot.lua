-- snapshot.lua: read-only view of the pool, at one instant of server time.
--
-- KEYS[1] pool state hash, KEYS[2] pool event stream
-- ARGV[1..6] common (see lib/state.lua); ARGV[3] may be "*" to accept any stored membership
--
-- Never writes. Reply (JSON): {"missing":true,"now":ms} when the pool has no state yet, else
--   now epoch generation version active exhausted strategy skip_until probe_member
--   healed: "<ms> <what was corrupt>" when heal.lua rebuilt this state, else ""
--   members: [{id, cooling_until, cooling_kind, failures, ejections,
--              parked_until (ms, -1 until unparked, 0 not parked), park_reason}] in pool order

local S, err = load(true)
if not S then
  if err == NEED_SPEC then return cjson.encode({missing = true, now = now_ms()}) end
  return err
end
local members = {}
for i, id in ipairs(S.ids) do
  local m = S.m[id]
  local parked = m.parked_until or 0
  if parked == math.huge then parked = -1 end
  members[i] = {id = id, cooling_until = m.cooling_until, cooling_kind = m.cooling_kind,
                failures = m.failures, ejections = m.ejections, parked_until = parked,
                park_reason = m.park_reason, weight = S.weights[id]}
end
return cjson.encode({missing = false, now = S.now, epoch = S.epoch, generation = S.generation,
                     version = S.version, active = S.active, exhausted = S.exhausted,
                     strategy = S.strategy, skip_until = S.skip_until,
                     probe_member = string.match(S.probe, '^([^|]*)|') or '', members = members,
                     healed = redis.call('HMGET', KEYS[1], 'healed')[1] or ''})
