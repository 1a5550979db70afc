-- lib/membership.lua: rolling deploys (docs/design.md, "Rolling deploys"): whose membership a pool keeps
-- while workers of two configurations share it, and what a worker whose configuration did not win may use.
-- Loaded after lib/commit.lua: it fills in `keeps_stored_membership` (declared in lib/state.lua) and wraps
-- `reply`.
--
-- The rule: a configuration carries a `revision` (spec field "revision", absent = 0; stored in the hash
-- field `revision`). A higher revision replaces the stored membership at once; a lower one never does; an
-- equal one (two configurations nobody numbered) only once the stored membership has stood for
-- MEMBERSHIP_HOLD_MS since the reconfiguration that wrote it (hash field `membership_at`, ms), so two
-- configurations rewrite each other at most once per hold, not on every call. A caller whose configuration
-- did not win is served within the stored membership: every script works on the stored members, and each
-- reply tells it `usable`, the first member (forward from the active one) that both the stored membership
-- and its own configuration have: a worker can only use members it holds the secret of. Every change of
-- the stored membership writes one `reconfigured` event.

local MEMBERSHIP_HOLD_MS = 600000

keeps_stored_membership = function(S, h, spec, created)
  local rev = tonumber(spec.revision) or 0
  if rev ~= rev or rev < 0 then rev = 0 end
  rev = math.floor(math.min(rev, 1e12))
  if not created then
    local stored = int_field(h, 'revision', 0) or 0
    local at = int_field(h, 'membership_at', 0) or 0
    local keep
    if rev ~= stored then keep = rev < stored else keep = S.now - at < MEMBERSHIP_HOLD_MS end
    if keep then
      S.foreign = {}
      for _, id in ipairs(spec.members) do S.foreign[id] = true end
      return true
    end
    S.set.membership_at = S.now
    -- One `reconfigured` event per change of the membership; settle_pointer writes it instead when the
    -- active member is gone (it moves the pointer).
    local stays = S.active == ''
    for _, id in ipairs(spec.members) do
      if id == S.active then stays = true end
    end
    if stays then emit(S, 'reconfigured', {from = S.active, to = S.active}) end
  end
  if rev > 0 or h.revision ~= nil then S.set.revision = rev end
  return false
end

local reply_within_own_membership = reply
-- Reply fields for a caller served within another configuration's membership:
--   foreign       true
--   usable        the member it should use ("" when the two memberships share none)
--   usable_ready  ms when `usable` can serve: 0 now, -1 never (parked until unparked)
reply = function(S, extra)
  if S.foreign and not S.failed then
    local n = #S.ids
    local from = (S.active ~= '' and S.pos[S.active]) or 1
    local best, best_t = nil, math.huge
    for k = 0, n - 1 do
      local id = S.ids[((from - 1 + k) % n) + 1]
      if S.foreign[id] then
        local t = ready_at(S, id)
        if S.skip_until > S.now and S.skip_until > t then t = S.skip_until end
        if t == 0 then
          best, best_t = id, 0
          break
        end
        if t < best_t then best, best_t = id, t end
      end
    end
    extra.foreign = true
    extra.usable = best or ''
    extra.usable_ready = best_t == math.huge and -1 or best_t
  end
  return reply_within_own_membership(S, extra)
end
