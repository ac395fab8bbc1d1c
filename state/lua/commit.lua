-- Commit one agent's new state, atomically, if it is newer than the stored one.
--
-- KEYS[1]: state key    <prefix>:state:{<agentId>}   STRING, JSON of handlers.Agent
-- KEYS[2]: agent key    <prefix>:agent:{<agentId>}   HASH, the public read model
-- KEYS[3]: seen key     <prefix>:seen:{<agentId>}    ZSET dedupe key -> DedupeAt unix ms
-- KEYS[4]: outbox key   <prefix>:outbox:{<agentId>}  ZSET JSON of state.Outgoing -> status version
--
-- ARGV[1]: appliedSeq of the new state (decimal; below 2^53)
-- ARGV[2]: new state, JSON of handlers.Agent (a tombstone for a removed agent)
-- ARGV[3]: "1" to write the read model from ARGV[4..10], "0" to delete it
-- ARGV[4..10]: read-model fields presenceId, name, text, baseStatus, signedIn, since, version
-- ARGV[11]: dedupe key to record, "" for none
-- ARGV[12]: DedupeAt of that key, unix ms
-- ARGV[13]: dedupe window, ms: keys older than (newest DedupeAt - window) are forgotten
-- ARGV[14]: n, the number of outbox entries that follow
-- ARGV[15..14+2n]: n pairs status version, JSON of state.Outgoing
--
-- Returns 1 when applied, 0 when the stored appliedSeq is not lower (nothing written).
-- Numbers are compared as numbers; every one stays below 2^53 so Lua doubles hold them exactly.

-- An agent never committed counts as appliedSeq 0.
local seq = 0
local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, cur = pcall(cjson.decode, stored)
  if not ok or type(cur) ~= 'table' then
    return redis.error_reply('ERR presenced: state at ' .. KEYS[1] .. ' is not a JSON object')
  end
  seq = tonumber(cur['appliedSeq']) or 0
end
if seq >= tonumber(ARGV[1]) then
  return 0
end

redis.call('SET', KEYS[1], ARGV[2])

redis.call('DEL', KEYS[2])
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[2],
    'presenceId', ARGV[4], 'name', ARGV[5], 'text', ARGV[6], 'baseStatus', ARGV[7],
    'signedIn', ARGV[8], 'since', ARGV[9], 'version', ARGV[10])
end

if ARGV[11] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[12], ARGV[11])
  local newest = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
  local cutoff = tonumber(newest[2]) - tonumber(ARGV[13])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('(%d', cutoff))
  if redis.call('ZCARD', KEYS[3]) == 0 then
    redis.call('DEL', KEYS[3])
  end
end

local n = tonumber(ARGV[14])
for i = 0, n - 1 do
  redis.call('ZADD', KEYS[4], ARGV[15 + 2 * i], ARGV[16 + 2 * i])
end

return 1
