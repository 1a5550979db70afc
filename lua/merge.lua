-- merge.lua: after an outage, bring in the cooldowns a worker learned while Redis was unreachable;
-- after Redis lost a pool's state (a flush, an eviction, an empty replica promoted), what the worker
-- knew of it.
--
-- KEYS[1] pool state hash, KEYS[2] pool event stream
-- ARGV[1..6] common (see lib/state.lua)
-- ARGV[7]  JSON list of [member id, remaining cooldown in ms, failure kind] learned locally, each
--          optionally followed by [ejections, remaining park in ms (-1 until unparked, 0 none),
--          park reason] (older workers send only the first three)
-- ARGV[8]  optional: a probe lease id to give back (a call cancelled before it could report)
-- ARGV[9]  optional: the reason of the `failover` event a merge may cause (default "merged after outage")
--
-- Each cooldown is merged as until = max(stored, now + remaining), kept when within MERGE_SLACK_MS (1 s) of
-- the stored one: never shortened, never escalated;
-- ejection counts by max(); a park only onto a member that is not parked. Members the pool no longer
-- has are ignored. If the active member cannot serve afterwards the pointer moves (one `failover`
-- event), or the pool is exhausted. Writes nothing when nothing changes.
-- Reply (JSON): common fields plus
--   merged       how many cooldowns were extended
--   restored     how many ejection counts and parks were brought back
--   transitioned true when this call moved the pointer or exhausted the pool

-- A deadline less than this past the stored one adds nothing: workers that remember one cooldown (after a
-- lost or unreadable state) would otherwise each extend it by the milliseconds between their replies, and
-- each write and notify.
local MERGE_SLACK_MS = 1000

local S, err = load()
if not S then return err end
settle_pointer(S)
local ok, learned = pcall(cjson.decode, ARGV[7])
if not ok or type(learned) ~= 'table' then
  return redis.error_reply('COORD_BAD_ARGUMENT merge list is not valid JSON')
end

local merged, restored = 0, 0
for _, item in ipairs(learned) do
  local id, remaining, kind = item[1], tonumber(item[2]), item[3]
  local ejections, park, reason = tonumber(item[4]), tonumber(item[5]), item[6]
  if type(id) == 'string' and S.pos[id] ~= nil then
    local m = S.m[id]
    if ejections ~= nil and ejections > m.ejections then
      m.ejections = math.floor(math.min(ejections, 1000000))
      set_member(S, id, 'ejections', m.ejections)
      restored = restored + 1
    end
    if park ~= nil and park ~= 0 and (m.parked_until == nil or m.parked_until <= S.now) then
      park_member(S, id, park < 0 and -1 or math.floor(park), type(reason) == 'string' and reason or '')
      restored = restored + 1
    end
  end
  if type(id) == 'string' and S.pos[id] ~= nil and remaining ~= nil and remaining > 0 then
    local m = S.m[id]
    local new_until = S.now + math.floor(math.min(remaining, 100 * 365 * 86400000))
    if new_until > m.cooling_until + MERGE_SLACK_MS then
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
local why = (ARGV[9] ~= nil and ARGV[9] ~= '') and ARGV[9] or 'merged after outage'
if merged + restored > 0 and S.strategy ~= 'round_robin' and not available(S, S.active) then
  transitioned = advance(S, 'failover', {member = S.active, reason = why})
end

commit(S)
return reply(S, {merged = merged, restored = restored, transitioned = transitioned})
