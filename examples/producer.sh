#!/bin/sh
# Submit a Dockhand job with redis-cli, then wait for it and print its state.
#
#     REDIS_URL=redis://127.0.0.1:6379/ sh examples/producer.sh
#
# Environment: REDIS_URL, DOCKHAND_PREFIX (default "dockhand"), IMAGE (default
# "dockhand-busybox:latest"), JOB_ID (default: a fresh one). Exits 0 when the job
# completed, 1 otherwise.
set -eu
url=${REDIS_URL:-redis://127.0.0.1:6379/}
prefix=${DOCKHAND_PREFIX:-dockhand}
image=${IMAGE:-dockhand-busybox:latest}
id=${JOB_ID:-sh-$$-$(date +%s)}

# LPUSH onto the inbox works the same way as XADD onto the stream.
redis-cli -u "$url" LPUSH "$prefix:{default}:inbox" \
  "{\"id\":\"$id\",\"image\":\"$image\",\"command\":\"echo hello from sh; uname -s\"}" >/dev/null
echo "submitted $id"

i=0
while [ $i -lt 600 ]; do
  status=$(redis-cli -u "$url" HGET "$prefix:{default}:job:$id" status)
  case "$status" in completed|aborted) break ;; esac
  sleep 0.2
  i=$((i + 1))
done
echo "status=$status"
# The stored log, entry by entry. An entry's `line` is one line, or `count` lines
# joined by newlines (lines that came together), so printing each entry's `line`
# prints the log line by line. A short script picks that field out, since a
# multi-line value would confuse a grep of XRANGE's output.
redis-cli -u "$url" EVAL "local out = {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'line' then out[#out + 1] = fields[i + 1] end
  end
end
return out" 1 "$prefix:{default}:job:$id:log" | sed 's/^/  /'
[ "$status" = completed ]
