-- Store the organisation configuration if it is newer than the stored one.
--
-- KEYS[1]: config key <prefix>:config   STRING, JSON of handlers.Config
--
-- ARGV[1]: seq of the new configuration (decimal; below 2^53)
-- ARGV[2]: new configuration, JSON of handlers.Config
--
-- Returns 1 when written, 0 when the stored seq is not lower (nothing written).

local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, cur = pcall(cjson.decode, stored)
  if not ok or type(cur) ~= 'table' then
    return redis.error_reply('ERR presenced: config at ' .. KEYS[1] .. ' is not a JSON object')
  end
  local seq = tonumber(cur['seq']) or 0
  if seq >= tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
