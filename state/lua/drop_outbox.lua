-- Delete the outboxes whose changes are published, each only while the agent is
-- still at the applied sequence it was published at. A commit whose reply was
-- lost (the server went away after applying it) leaves a newer sequence and an
-- outbox that is not out yet: that one must stay for the next owner.
--
-- KEYS[3i-2], KEYS[3i-1], KEYS[3i] for agent i (as in commit.lua):
--   <prefix>:agent:{<id>}, <prefix>:state:{<id>}, <prefix>:outbox:{<id>}
-- ARGV[i]: the applied sequence the outbox was published at
--
-- Returns the number of outboxes deleted.

local function storedSeq(h, s)
  local seq = redis.call('HGET', h, 'seq')
  if seq then
    return tonumber(seq)
  end
  local raw = redis.call('GET', s)
  if not raw then
    return 0
  end
  local ok, st = pcall(cjson.decode, raw)
  if not ok or type(st) ~= 'table' then
    return redis.error_reply('ERR presenced: state at ' .. s .. ' is not a JSON object')
  end
  return tonumber(st['appliedSeq']) or 0
end

local n = 0
for i = 1, #ARGV do
  local stored = storedSeq(KEYS[3 * i - 2], KEYS[3 * i - 1])
  if type(stored) == 'table' then return stored end
  if stored == tonumber(ARGV[i]) then
    n = n + redis.call('DEL', KEYS[3 * i])
  end
end
return n
