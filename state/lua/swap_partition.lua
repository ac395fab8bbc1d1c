-- Replace a partition record only if the stored one is still the one the caller
-- holds: same marker and checkpoint (a missing record counts as marker "" and
-- checkpoint 0). Checking and writing in one step keeps a record from landing in
-- a store that lost its data between a check and a write.
--
-- KEYS[1]: partition key   ARGV[1]: new record (JSON of Partition)
-- ARGV[2]: expected marker  ARGV[3]: expected checkpoint (decimal)
--
-- Returns 1 when written, 0 when the stored record differs (nothing written).

local marker, seq = '', 0
local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, cur = pcall(cjson.decode, stored)
  if not ok or type(cur) ~= 'table' then
    return redis.error_reply('ERR presenced: partition at ' .. KEYS[1] .. ' is not a JSON object')
  end
  if type(cur['marker']) == 'string' then marker = cur['marker'] end
  seq = tonumber(cur['seq']) or 0
end
if marker ~= ARGV[2] or seq ~= tonumber(ARGV[3]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
