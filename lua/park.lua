-- park.lua: an operator takes `member` out of service.
--
-- KEYS[1] pool state hash, KEYS[2] pool event stream
-- ARGV[1..6] common (see lib/state.lua)
-- ARGV[7]  member id
-- ARGV[8]  park duration, ms; -1 parks until unparked
-- ARGV[9]  reason (free text, shown in status and events)
--
-- Always one `parked` event (the pointer moves with it when the member was active), plus one
-- `exhausted` event if nothing else can serve. Automatic logic never clears or shortens a park.
-- Reply (JSON): common fields plus
--   parked_until  ms, or -1 for "until unparked"
--   transitioned  true

local S, err = load()
if not S then return err end
settle_pointer(S)
local id, duration, reason = ARGV[7], tonumber(ARGV[8]), ARGV[9]
if not has_member(S, id) then return redis.error_reply('COORD_UNKNOWN_MEMBER ' .. id) end

park_member(S, id, duration, reason)
local fields = {member = id, reason = reason, ['until'] = S.m[id].parked_until}
if id == S.active then
  advance(S, 'parked', fields, true)
else
  emit(S, 'parked', fields)
end

commit(S)
local parked_until = S.m[id].parked_until
if parked_until == math.huge then parked_until = -1 end
return reply(S, {parked_until = parked_until, transitioned = true})
