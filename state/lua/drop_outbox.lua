-- Delete the outboxes whose changes are published, each only while the agent is
-- still at the applied sequence it was published at. A commit whose reply was
-- lost (the server went away after applying it) leaves a newer sequence and an
-- outbox that is not out yet: that one must stay for the next owner.
--
-- KEYS[3i-2], KEYS[3i-1], KEYS[3i] for agent i (as in commit.lua):
--   <prefix>:agent:{<id>}, <prefix>:state:{<id>}, <prefix>:outbox:{<id>}
-- ARGV[i]: the applied sequence the outbox was published at
--
-- Returns the number of outboxes deleted. storedSeq comes from stored_seq.lua.

local n = 0
for i = 1, #ARGV do
  local stored = storedSeq(KEYS[3 * i - 2], KEYS[3 * i - 1])
  if type(stored) == 'table' then return stored end
  if stored == tonumber(ARGV[i]) then
    n = n + redis.call('DEL', KEYS[3 * i])
  end
end
return n
