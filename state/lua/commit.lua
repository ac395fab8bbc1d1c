-- Commit the new state of several agents, each atomically and each only if the
-- store holds the input sequence the writer expects (or, for a restore, an older
-- one). storedSeq comes from stored_seq.lua, which the store puts in front.
--
-- KEYS[3i-2], KEYS[3i-1], KEYS[3i] for agent i of n:
--   <prefix>:agent:{<id>}   HASH, read model + worker fields (state/layout.go)
--   <prefix>:state:{<id>}   STRING, JSON of handlers.Agent for an agent without a status
--   <prefix>:outbox:{<id>}  STRING, its last commit's status changes and dedupe entries
--
-- ARGV[1]: MessagePack, one flat array with the entries of every agent in KEYS
-- order (flat, so Lua builds no table per agent):
--   expect, seq, flags, n, field, value, ... (n strings), state
--   expect  the applied sequence the store must hold (0: none)
--   seq     the applied sequence of the new state
--   flags   any of:
--           r  restore: apply if the stored sequence is lower, whatever expect says
--           H  delete the hash before writing it (a full rewrite)
--           s  write the state key (state), delete the hash
--           S  delete the state key
--           o  set the outbox (outbox)
--           O  delete the outbox
--   n       how many hash field and value strings follow, to write
--   state   the state key's value, or '' without s
-- ARGV[1+i]: agent i's outbox, or '' without o
--
-- Returns one 1 (applied) or 0 (stored sequence not as expected: nothing written)
-- per agent. Sequences stay below 2^53, so Lua numbers compare them exactly.

local a = cmsgpack.unpack(ARGV[1])
local out = {}
local p = 1
for i = 1, #KEYS / 3 do
  local h, s, o = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local expect, seq, flags, n = a[p], a[p + 1], a[p + 2], a[p + 3]
  local first = p + 4
  local state = a[first + n]
  p = first + n + 1

  local stored = storedSeq(h, s)
  if type(stored) == 'table' then return stored end
  local apply
  if string.find(flags, 'r', 1, true) then
    apply = stored < seq
  else
    apply = stored == expect
  end
  if apply then
    if string.find(flags, 'H', 1, true) then redis.call('DEL', h) end
    if n > 0 then
      redis.call('HSET', h, unpack(a, first, first + n - 1))
    end
    if string.find(flags, 's', 1, true) then
      redis.call('DEL', h)
      redis.call('SET', s, state)
    end
    if string.find(flags, 'S', 1, true) then redis.call('DEL', s) end
    if string.find(flags, 'o', 1, true) then
      redis.call('SET', o, ARGV[1 + i])
    elseif string.find(flags, 'O', 1, true) then
      redis.call('DEL', o)
    end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
