-- storedSeq returns the applied sequence the store holds for an agent: the
-- hash's seq field, or for an agent without a status the appliedSeq of its state
-- key, or 0. Put in front of the scripts that compare it (commit, drop_outbox).
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

