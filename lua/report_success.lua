-- report_success.lua: a request on `member` succeeded.
--
-- KEYS[1] pool state hash, KEYS[2] pool event stream
-- ARGV[1..6] common (see lib/state.lua)
-- ARGV[7]  member id
-- ARGV[8]  token epoch, ARGV[9] token generation
-- ARGV[10] probe lease id the selection held, or ""
--
-- Resets the member's consecutive failure and ejection counts (so its next cooldown starts from the
-- base again); writes nothing when there is nothing to reset. Workers send it when the ejection count
-- is not zero or for a probe; a failure count alone restarts with the next failure report
-- (docs/design.md, "Failure counts"), older workers send it for that too. A success under the pool's half-open
-- probe lease moves the pointer back to that lower member: one `failback` event; under the recovery
-- probe of an exhausted pool it ends the episode: one `recovered` event.
-- Reply (JSON): common fields plus
--   reset        true when counters were reset
--   transitioned true when this call made the failback

local S, err = load()
if not S then return err end
settle_pointer(S)
local id, tok_epoch, lease = ARGV[7], ARGV[8], ARGV[10]
if not has_member(S, id) then return redis.error_reply('COORD_UNKNOWN_MEMBER ' .. id) end
local m = S.m[id]
local out = {reset = false, transitioned = false}

if m.failures > 0 or m.ejections > 0 then
  m.failures, m.ejections = 0, 0
  set_member(S, id, 'failures', 0)
  set_member(S, id, 'ejections', 0)
  set_member(S, id, 'failed_at', 0)
  out.reset = true
end

if release_probe(S, lease) then
  if tok_epoch == S.epoch and S.exhausted and available(S, id) then
    -- The probe of an exhausted pool served: the pool is back, for the whole fleet at once.
    set_exhausted(S, false)
    if not available(S, S.active) then set_active(S, id) end
    emit(S, 'recovered', {to = S.active, member = id})
    out.transitioned = true
  elseif tok_epoch == S.epoch and S.strategy == 'priority' and available(S, id)
      and S.pos[id] < S.pos[S.active] then
    local from = S.active
    set_active(S, id)
    emit(S, 'failback', {from = from, to = id, member = id})
    out.transitioned = true
  end
end

commit(S)
return reply(S, out)
