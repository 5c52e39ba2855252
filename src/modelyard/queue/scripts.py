"""The worker's Lua script: store a batch's results (NX) and acknowledge its entries atomically."""

COMMIT = """
local group, ttl, now = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local del, clear, n = ARGV[4] == '1', ARGV[5] == '1', #KEYS - 4
local dups = 0
for r = 1, n do
  if redis.call('SET', KEYS[4 + r], ARGV[4 + 2 * r], 'NX', 'EX', ttl) then
    redis.call('ZADD', KEYS[2], now, ARGV[5 + 2 * r])
  else
    dups = dups + 1
  end
end
local ids = {}
for j = 6 + 2 * n, #ARGV do ids[#ids + 1] = ARGV[j] end
if #ids > 0 then
  redis.call('XACK', KEYS[1], group, unpack(ids))
  if del then redis.call('XDEL', KEYS[1], unpack(ids)) end
  if clear then redis.call('HDEL', KEYS[3], unpack(ids)) end
end
if n - dups > 0 then redis.call('HINCRBY', KEYS[4], 'results', n - dups) end
if dups > 0 then redis.call('HINCRBY', KEYS[4], 'duplicates', dups) end
return dups
"""
"""KEYS: stream, index, errors, stats, result keys...; ARGV: group, ttl, now, del, clear,
(blob, uri) per result, then the entry ids to acknowledge. Returns the duplicate count."""
