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
--   flags   the sum of any of (tested by arithmetic: a C call per test would
--           cost more than the rest of the bookkeeping):
--           1   restore: apply if the stored sequence is lower, whatever expect says
--           2   delete the hash before writing it (a full rewrite)
--           4   write the state key (state), delete the hash
--           8   delete the state key
--           16  set the outbox (outbox)
--           32  delete the outbox
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
  if flags % 2 == 1 then
    apply = stored < seq
  else
    apply = stored == expect
  end
  if apply then
    if flags % 4 >= 2 then redis.call('DEL', h) end
    if n > 0 then
      redis.call('HSET', h, unpack(a, first, first + n - 1))
    end
    if flags % 8 >= 4 then
      redis.call('DEL', h)
      redis.call('SET', s, state)
    end
    if flags % 16 >= 8 then redis.call('DEL', s) end
    if flags % 32 >= 16 then
      redis.call('SET', o, ARGV[1 + i])
    elseif flags >= 32 then
      redis.call('DEL', o)
    end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
