-- reset.lua: an operator replaces a pool's state, readable or not, with a fresh one.
--
-- KEYS[1] pool state hash, KEYS[2] pool event stream
-- ARGV[1..6] common (see lib/state.lua); ARGV[4] must hold the membership spec (reply {"need_spec":true}
--          otherwise, before anything is touched); ARGV[5] becomes the new epoch
-- ARGV[7]  reason (free text, shown in the event)
--
-- The repair for a state the other scripts refuse as COORD_CORRUPT (wrong key types, garbage fields,
-- a foreign stream). Deletes both keys, whatever they hold, and writes in the same atomic step a new
-- state (new epoch, so tokens of the old one can move nothing) and a new stream holding exactly one
-- `reset` event (generation 1, `to` the new active member). Cooldowns and counters are dropped: the
-- fleet learns them again. Parks are an operator's decision, not automatic state: a park of a
-- configured member that is still readable and not over is kept.
-- Reply (JSON): common fields plus
--   previous_epoch  the epoch of the replaced state, "" when it had none readable
--   parks_kept      how many parks were carried over
--   transitioned    true

if ARGV[4] == '' then return NEED_SPEC end
local reason = ARGV[7]

-- Read what can be salvaged before deleting anything.
local old, previous_epoch = read_previous()

local refused = check_acl({'DEL', KEYS[1], KEYS[2]})
if refused then return refused end
redis.call('DEL', KEYS[1], KEYS[2])
local S, err = load()
if not S then return err end

local parks_kept = 0
for _, id in ipairs(S.ids) do
  local raw = old[id .. ':parked_until']
  local until_ms = nil
  if raw == FOREVER then
    until_ms = -1
  elseif raw ~= nil then
    local t = int_field(old, id .. ':parked_until', nil)
    if t ~= nil and t > S.now then until_ms = t - S.now end
  end
  if until_ms ~= nil then
    local why = old[id .. ':park_reason'] or ''
    park_member(S, id, until_ms, string.sub(why, 1, 200))
    parks_kept = parks_kept + 1
  end
end

local fields = {reason = reason}
if S.strategy ~= 'round_robin' then
  local id = scan_from(S, 1) or S.ids[1]
  set_active(S, id)
  fields.to = id
end
emit(S, 'reset', fields)

commit(S)
return reply(S, {previous_epoch = previous_epoch, parks_kept = parks_kept, transitioned = true})
