-- unpark.lua: an operator clears the park of `member`, and nothing else.
--
-- KEYS[1] pool state hash, KEYS[2] pool event stream
-- ARGV[1..6] common (see lib/state.lua)
-- ARGV[7]  member id
--
-- The pointer does not move (sticky never snaps back); an exhausted pool recovers on the next
-- acquire. One `unparked` event when there was a park to clear, no write otherwise.
-- Reply (JSON): common fields plus
--   transitioned  true when a park was cleared

local S, err = load()
if not S then return err end
settle_pointer(S)
local id = ARGV[7]
if not has_member(S, id) then return redis.error_reply('COORD_UNKNOWN_MEMBER ' .. id) end

local m = S.m[id]
local was_parked = m.parked_until ~= nil
if was_parked then
  m.parked_until = nil
  set_member(S, id, 'parked_until', nil)
  set_member(S, id, 'park_reason', nil)
  emit(S, 'unparked', {member = id})
end

commit(S)
return reply(S, {transitioned = was_parked})
