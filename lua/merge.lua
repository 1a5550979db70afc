-- merge.lua: after an outage, bring in the cooldowns a worker learned while Redis was unreachable.
--
-- KEYS[1] pool state hash, KEYS[2] pool event stream
-- ARGV[1..6] common (see lib/state.lua)
-- ARGV[7]  JSON list of [member id, remaining cooldown in ms, failure kind] learned locally
-- ARGV[8]  optional: a probe lease id to give back (a call cancelled before it could report)
--
-- Each cooldown is merged as until = max(stored, now + remaining): never shortened, never escalated.
-- Members the pool no longer has are ignored. If the active member is cooling afterwards the
-- pointer moves (one `failover` event, reason "merged after outage"), or the pool is exhausted.
-- Writes nothing when nothing changes.
-- Reply (JSON): common fields plus
--   merged       how many cooldowns were extended
--   transitioned true when this call moved the pointer or exhausted the pool

local S, err = load()
if not S then return err end
settle_pointer(S)
local ok, learned = pcall(cjson.decode, ARGV[7])
if not ok or type(learned) ~= 'table' then
  return redis.error_reply('COORD_BAD_ARGUMENT merge list is not valid JSON')
end

local merged = 0
for _, item in ipairs(learned) do
  local id, remaining, kind = item[1], tonumber(item[2]), item[3]
  if type(id) == 'string' and S.pos[id] ~= nil and remaining ~= nil and remaining > 0 then
    local m = S.m[id]
    local new_until = S.now + math.floor(math.min(remaining, 100 * 365 * 86400000))
    if new_until > m.cooling_until then
      m.cooling_until = new_until
      set_member(S, id, 'cooling_until', new_until)
      if type(kind) == 'string' and kind ~= '' then
        m.cooling_kind = kind
        set_member(S, id, 'cooling_kind', kind)
      end
      merged = merged + 1
    end
  end
end

if ARGV[8] ~= nil and ARGV[8] ~= '' then release_probe(S, ARGV[8]) end

local transitioned = false
if merged > 0 and S.strategy ~= 'round_robin' and not available(S, S.active) then
  transitioned = advance(S, 'failover', {member = S.active, reason = 'merged after outage'})
end

commit(S)
return reply(S, {merged = merged, transitioned = transitioned})
