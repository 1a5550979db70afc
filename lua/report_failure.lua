-- report_failure.lua: a request on `member` failed with failure `kind`.
--
-- KEYS[1] pool state hash, KEYS[2] pool event stream
-- ARGV[1..6] common (see lib/state.lua)
-- ARGV[7]  member id
-- ARGV[8]  token epoch, ARGV[9] token generation (from the selection the request used)
-- ARGV[10] kind: rate_limited | quota_exhausted | auth | transient | model_unavailable
-- ARGV[11] provider hint, ms until the member may be used again; -1 when there is none
-- ARGV[12] base cooldown for this kind, ms; ARGV[13] minimum, ms; ARGV[14] maximum, ms
-- ARGV[15] escalation multiplier per consecutive ejection (e.g. 2)
-- ARGV[16] consecutive failures before the member is cooled (1 = at once; transient uses more)
-- ARGV[17] probe lease id the selection held, or ""
-- ARGV[18] when the reporting worker last served on `member` since its own last failure report there,
--          server ms (its estimate); "0" when it has not (absent from older workers: "0")
-- ARGV[19] how long before the member's last counted failure such a success still restarts the
--          count, ms (absent: 0)
--
-- Counting (docs/design.md, "Failure counts"): a transient failure below the threshold is counted
-- with its server time (`<id>:failed_at`); it changes no decision, so it sends no notice and moves no
-- version. The count restarts (this failure counts as the first) when the reporter served since its
-- own last report no earlier than ARGV[19] ms before the last counted failure: the member served in
-- between. A worker that saw no success since its last report, or whose success is older, adds one.
-- Rules: a token of another epoch changes nothing. A member already cooling is never escalated
-- again; only a provider hint that ends at least 1 s later extends it. A stale token never cools the member that is
-- active now. Cooling the active member moves the pointer (or exhausts the pool): one event.
-- Reply (JSON): common fields plus
--   member, kind the member reported and the kind of its failure
--   stale        true when the token could not change anything
--   cooled       true when this call started a cooldown of `member`
--   until        member's cooling deadline after this call, ms (0 when not cooling)
--   failures     consecutive failures counted for `member`
--   counted      true when this call only counted the failure (below the threshold): no decision
--                changed, the caller's local view stays right
--   transitioned true when this call made a transition

local S, err = load()
if not S then return err end
settle_pointer(S)
local id, tok_epoch, tok_gen, kind = ARGV[7], ARGV[8], tonumber(ARGV[9]), ARGV[10]
local hint, base, min_ms, max_ms = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local multiplier, threshold, lease = tonumber(ARGV[15]), tonumber(ARGV[16]), ARGV[17]
local served, grace = tonumber(ARGV[18] or '0') or 0, tonumber(ARGV[19] or '0') or 0
if not has_member(S, id) then return redis.error_reply('COORD_UNKNOWN_MEMBER ' .. id) end

local m = S.m[id]
local out = {member = id, kind = kind, stale = false, cooled = false, transitioned = false}

local function finish(committed)
  if not committed then commit(S) end
  out['until'] = m.cooling_until > S.now and m.cooling_until or 0
  out.failures = m.failures
  return reply(S, out)
end

if tok_epoch ~= S.epoch then
  out.stale = true
  return finish()
end

-- A failed probe (half-open or recovery) cools the member again at once, escalated: it was the one
-- request the fleet allowed it.
if release_probe(S, lease) then threshold = 1 end

if kind == 'model_unavailable' then
  local d = cooldown_ms(base, multiplier, 0, hint, min_ms, max_ms)
  if S.skip_until <= S.now then
    S.skip_until = S.now + d
    S.set.skip_until = S.skip_until
    S.changed = true
    out.cooled = true
    out.transitioned = exhaust(S, {member = id, kind = kind, reason = 'model unavailable',
                                   retry_at = S.skip_until})
  end
  return finish()
end

local is_active = (id == S.active)

if m.cooling_until > S.now then
  if hint >= 0 then
    local new_until = S.now + cooldown_ms(base, multiplier, 0, hint, min_ms, max_ms)
    -- Many workers report the same 429 within milliseconds; only a hint that adds at least a
    -- second is worth a write and a change notice to the whole fleet.
    if new_until > m.cooling_until + 1000 then
      m.cooling_until = new_until
      set_member(S, id, 'cooling_until', new_until)
    end
  end
  out.stale = tok_gen ~= S.generation
  return finish()
end

if is_active and tok_gen ~= S.generation then
  out.stale = true
  return finish()
end

if m.failures > 0 and served > 0 and served + grace > m.failed_at then m.failures = 0 end
m.failures = m.failures + 1
if m.failures < threshold then
  out.counted = true
  if commit_count(S, id, m) then return finish(true) end
  set_member(S, id, 'failures', m.failures)
  set_member(S, id, 'failed_at', S.now)
  return finish()
end

local d = cooldown_ms(base, multiplier, m.ejections, hint, min_ms, max_ms)
m.cooling_until = S.now + d
m.ejections = m.ejections + 1
m.failures = 0
m.cooling_kind = kind
set_member(S, id, 'cooling_until', m.cooling_until)
set_member(S, id, 'ejections', m.ejections)
set_member(S, id, 'failures', 0)
set_member(S, id, 'failed_at', 0)
set_member(S, id, 'cooling_kind', kind)
out.cooled = true

if is_active then
  out.transitioned = advance(S, 'failover', {member = id, kind = kind, ['until'] = m.cooling_until})
elseif S.strategy == 'round_robin' then
  emit(S, 'ejected', {member = id, kind = kind, ['until'] = m.cooling_until})
  out.transitioned = true
  if not any_available(S) then exhaust(S, {member = id, kind = kind}) end
end
return finish()
