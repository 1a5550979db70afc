-- rotate.lua: an operator moves the pool off its active member by parking it for a while.
--
-- KEYS[1] pool state hash, KEYS[2] pool event stream
-- ARGV[1..6] common (see lib/state.lua)
-- ARGV[7]  park duration for the member rotated away from, ms; -1 parks it until unparked
-- ARGV[8]  reason
--
-- One `rotated` event (from, to), plus one `exhausted` event if nothing else can serve.
-- Reply (JSON): common fields plus
--   member        the member rotated away from
--   parked_until  its park deadline, ms, or -1 for "until unparked"
--   transitioned  true

local S, err = load()
if not S then return err end
settle_pointer(S)
if S.strategy == 'round_robin' then
  return redis.error_reply('COORD_BAD_ARGUMENT rotate needs an active member; round_robin has none')
end
local duration, reason = tonumber(ARGV[7]), ARGV[8]
local id = S.active

park_member(S, id, duration, reason)
advance(S, 'rotated', {member = id, reason = reason, ['until'] = S.m[id].parked_until}, true)

commit(S)
local parked_until = S.m[id].parked_until
if parked_until == math.huge then parked_until = -1 end
return reply(S, {member = id, parked_until = parked_until, transitioned = true})
