-- Commit the new state of several agents, each atomically and each only if the
-- store holds the input sequence the writer expects (or, for a restore, an older
-- one). storedSeq comes from stored_seq.lua, which the store puts in front.
--
-- KEYS[3i-2], KEYS[3i-1], KEYS[3i] for agent i of n:
--   <prefix>:agent:{<id>}   HASH, read model + worker fields (state/layout.go)
--   <prefix>:state:{<id>}   STRING, JSON of handlers.Agent for an agent without a status
--   <prefix>:outbox:{<id>}  STRING, its last commit's status changes and dedupe entries
--
-- ARGV[1]: n
-- then per agent, from a:
--   ARGV[a]    expect: the applied sequence the store must hold (0: none)
--   ARGV[a+1]  the applied sequence of the new state
--   ARGV[a+2]  flags, any of:
--              r  restore: apply if the stored sequence is lower, whatever expect says
--              H  delete the hash before writing it (a full rewrite)
--              h  write m hash field/value pairs
--              s  write the state key (one JSON value), delete the hash
--              S  delete the state key
--              o  set the outbox (one value)
--              O  delete the outbox
--   ARGV[a+3]  m, the number of hash pairs
--   then 2m hash values (h), one state value (s), one outbox value (o), in that order
--
-- Returns one 1 (applied) or 0 (stored sequence not as expected: nothing written)
-- per agent. Sequences stay below 2^53, so Lua numbers compare them exactly.

local n = tonumber(ARGV[1])
local out = {}
local a = 2
for i = 1, n do
  local h, s, o = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local expect, seq, flags, m = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3])
  local v = a + 4
  local nextA = v + 2 * m
  if string.find(flags, 's', 1, true) then nextA = nextA + 1 end
  if string.find(flags, 'o', 1, true) then nextA = nextA + 1 end

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
    if m > 0 then
      redis.call('HSET', h, unpack(ARGV, v, v + 2 * m - 1))
    end
    v = v + 2 * m
    if string.find(flags, 's', 1, true) then
      redis.call('DEL', h)
      redis.call('SET', s, ARGV[v])
      v = v + 1
    end
    if string.find(flags, 'S', 1, true) then redis.call('DEL', s) end
    if string.find(flags, 'o', 1, true) then
      redis.call('SET', o, ARGV[v])
    elseif string.find(flags, 'O', 1, true) then
      redis.call('DEL', o)
    end
    out[i] = 1
  else
    out[i] = 0
  end
  a = nextA
end
return out
