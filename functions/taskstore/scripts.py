"""The Lua scripts: each is one transition of a task's state machine, atomic in Redis.

A script refuses what the machine does not allow and returns a code saying what it did, so
no caller ever writes a status with a plain HSET. Scripts touch task hashes named from
stream entries, which they cannot declare in KEYS: they need a single Redis, not a Cluster.
"""

from __future__ import annotations

import hashlib

from functions.taskstore import metrics
from functions.taskstore.keys import DELAYED_ENTRY, DONE_INLINE_BYTES

# The done message: the status, then (when small) the error and result, so a waiting
# long-poll need not read the hash back. Used by every script that sets a final state.
# A task with captured output gets the status only (the message has no room for the
# output): its readers read the hash. `fields_from` is where field, value pairs begin.
_PUBLISH_DONE = """
local function has_output(fields_from)
  for i = fields_from, #ARGV, 2 do
    if ARGV[i] == 'output' then return true end
  end
  return false
end
local function publish_done(channel, status, result, err, quiet)
  if not quiet and #result + #err <= DONE_INLINE_BYTES then
    redis.call('PUBLISH', channel, status .. '\\n' .. #err .. '\\n' .. err .. result)
  else
    redis.call('PUBLISH', channel, status)
  end
end
""".replace("DONE_INLINE_BYTES", str(DONE_INLINE_BYTES))

# (none) -> QUEUED. KEYS[1]=stream, KEYS[2..]=task hashes; ARGV = wake channel, received_at,
# queued_at, only_missing ('1': skip tasks Redis still has), then per task QueuedTask.fields().
# The hash remembers its stream entry: only that entry may ever run the task.
ENQUEUE = """
local per, queued = 8, {}
for i = 2, #KEYS do
  local a = 4 + (i - 2) * per
  if ARGV[4] ~= '1' or redis.call('EXISTS', KEYS[i]) == 0 then
    local id = redis.call('XADD', KEYS[1], '*', 'task_id', ARGV[a + 1], 'function_id', ARGV[a + 2],
                          'owner', ARGV[a + 3], 'arguments', ARGV[a + 4], 'timeout', ARGV[a + 5],
                          'attempt', ARGV[a + 6], 'retry', ARGV[a + 7], 'limits', ARGV[a + 8])
    redis.call('HSET', KEYS[i], 'status', 'QUEUED', 'owner', ARGV[a + 3], 'function_id', ARGV[a + 2],
               'received_at', ARGV[2], 'queued_at', ARGV[3], 'attempts', ARGV[a + 6] - 1, 'entry', id)
    queued[#queued + 1] = i - 1
    SUBMIT_COUNTER
  end
end
if #queued > 0 then redis.call('PUBLISH', ARGV[1], #queued) end
return queued
""".replace("SUBMIT_COUNTER", metrics.SUBMIT_COUNTER_LUA.format(fid="ARGV[a + 2]"))

# QUEUED -> RUNNING for new entries. KEYS[1]=stream; ARGV = group, consumer, count,
# dispatched_at, task key prefix. Per entry: {id, fields, code} with code 1 started,
# 0 already final, -1 no record or not the record's entry (never queued by the API).
CLAIM = """
local res = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
if not res then return {} end
local out = {}
for i, entry in ipairs(res[1][2]) do
  local fields = entry[2]
  local task_id, attempt = nil, '1'
  for j = 1, #fields, 2 do
    if fields[j] == 'task_id' then task_id = fields[j + 1] end
    if fields[j] == 'attempt' then attempt = fields[j + 1] end
  end
  local code = -1
  if task_id then
    local key = ARGV[5] .. task_id
    local state = redis.call('HMGET', key, 'status', 'entry')
    local s, e = state[1], state[2]
    if s == 'COMPLETED' or s == 'FAILED' then
      code = 0
    elseif s == 'QUEUED' and (e == false or e == entry[1]) then
      redis.call('HSET', key, 'status', 'RUNNING', 'dispatched_at', ARGV[4], 'attempts', attempt,
                 'dispatcher', ARGV[2])
      code = 1
    end
  end
  out[i] = {entry[1], fields, code}
end
return out
"""

# An entry taken over from a dead dispatcher (or our own, after an outage). KEYS[1]=task
# hash; ARGV = entry id, consumer, dispatched_at, attempt. 1 QUEUED -> RUNNING; 0 final;
# 2 it was RUNNING (lost with its dispatcher); -1 no record or another entry's task.
START = """
local state = redis.call('HMGET', KEYS[1], 'status', 'entry')
local s, e = state[1], state[2]
if s == 'COMPLETED' or s == 'FAILED' then return 0 end
if s == false or (e and e ~= ARGV[1]) then return -1 end
if s == 'RUNNING' then return 2 end
redis.call('HSET', KEYS[1], 'status', 'RUNNING', 'dispatched_at', ARGV[3], 'attempts', ARGV[4],
           'dispatcher', ARGV[2])
return 1
"""

# QUEUED | RUNNING -> COMPLETED | FAILED, first final state wins. KEYS[1]=task hash,
# KEYS[2]=done channel; ARGV = status, result, error, ttl, required status ("" for any
# unfinished one), then field, value pairs. A task whose hash Redis lost may finish too.
FINISH = _PUBLISH_DONE + """
local s = redis.call('HGET', KEYS[1], 'status')
if s == 'COMPLETED' or s == 'FAILED' then return 0 end
if ARGV[5] ~= '' and s ~= ARGV[5] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'result', ARGV[2], 'error', ARGV[3])
if #ARGV > 5 then redis.call('HSET', KEYS[1], unpack(ARGV, 6)) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
publish_done(KEYS[2], ARGV[1], ARGV[2], ARGV[3], has_output(6))
return 1
"""

# Both re-queue scripts start here: the old entry (ARGV[1] group, ARGV[2] entry id, "" for
# none; KEYS[1] stream) is forgotten whatever the answer, and a final task (KEYS[2]) stays final.
_LEAVE_OLD_ENTRY = """
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
end
local s = redis.call('HGET', KEYS[2], 'status')
if s == 'COMPLETED' or s == 'FAILED' then return 0 end
"""

# RUNNING | QUEUED -> QUEUED as a new entry, only while not final. KEYS[1]=stream,
# KEYS[2]=task hash; ARGV = group, old entry id ("" for none), wake channel, then the
# task's QueuedTask.fields(). The old entry is forgotten whatever the answer.
REQUEUE = _LEAVE_OLD_ENTRY + """
local id = redis.call('XADD', KEYS[1], '*', 'task_id', ARGV[4], 'function_id', ARGV[5], 'owner', ARGV[6],
                      'arguments', ARGV[7], 'timeout', ARGV[8], 'attempt', ARGV[9], 'retry', ARGV[10],
                      'limits', ARGV[11])
redis.call('HSET', KEYS[2], 'status', 'QUEUED', 'owner', ARGV[6], 'function_id', ARGV[5],
           'attempts', ARGV[9] - 1, 'entry', id)
redis.call('HDEL', KEYS[2], 'dispatcher')
redis.call('PUBLISH', ARGV[3], 1)
return 1
"""

# RUNNING | QUEUED -> QUEUED in the delayed set (a retry waiting its back-off), only while
# not final. KEYS[1]=stream, KEYS[2]=task hash, KEYS[3]=delayed set; ARGV = group, old entry
# id ("" for none), not_before, then the task's QueuedTask.fields(). As ENQUEUE_DELAYED,
# the record holds the future entry's fields until PROMOTE makes it.
REQUEUE_LATER = _LEAVE_OLD_ENTRY + """
redis.call('HSET', KEYS[2], 'status', 'QUEUED', 'owner', ARGV[6], 'function_id', ARGV[5],
           'attempts', ARGV[9] - 1, 'entry', 'DELAYED_ENTRY', 'not_before', ARGV[3], 'd_arguments', ARGV[7],
           'd_timeout', ARGV[8], 'd_attempt', ARGV[9], 'd_retry', ARGV[10], 'd_limits', ARGV[11])
redis.call('HDEL', KEYS[2], 'dispatcher')
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
""".replace("DELAYED_ENTRY", DELAYED_ENTRY)

# The database's final state, written over whatever Redis holds (it lost or rolled back
# data): the database is the authority. KEYS[1]=task hash, KEYS[2]=done channel; ARGV =
# status, result, error, ttl, then field, value pairs. Returns 1 if Redis said otherwise.
REPAIR = _PUBLISH_DONE + """
local s = redis.call('HGET', KEYS[1], 'status')
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'result', ARGV[2], 'error', ARGV[3])
if #ARGV > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
redis.call('HDEL', KEYS[1], 'entry', 'dispatcher')
redis.call('EXPIRE', KEYS[1], ARGV[4])
if s ~= ARGV[1] then
  publish_done(KEYS[2], ARGV[1], ARGV[2], ARGV[3], has_output(5))
  return 1
end
return 0
"""

# QUEUED -> FAILED for every waiting entry. KEYS[1]=stream, KEYS[2..]=task hashes; ARGV =
# result, error, ttl, finished_at, then per task (entry id, done channel). A final task's
# entry is dropped too; a RUNNING task is left alone.
PURGE = _PUBLISH_DONE + """
local purged = {}
for i = 2, #KEYS do
  local entry, channel = ARGV[3 + 2 * (i - 1)], ARGV[4 + 2 * (i - 1)]
  local s = redis.call('HGET', KEYS[i], 'status')
  if s == false or s == 'QUEUED' then
    redis.call('HSET', KEYS[i], 'status', 'FAILED', 'result', ARGV[1], 'error', ARGV[2], 'finished_at', ARGV[4])
    redis.call('HDEL', KEYS[i], 'entry')
    redis.call('EXPIRE', KEYS[i], ARGV[3])
    publish_done(channel, 'FAILED', ARGV[1], ARGV[2])
    redis.call('XDEL', KEYS[1], entry)
    purged[#purged + 1] = i - 1
  elseif s == 'COMPLETED' or s == 'FAILED' then
    redis.call('XDEL', KEYS[1], entry)
  end
end
return purged
"""

# (none) -> QUEUED, waiting in the delayed set until its time. KEYS[1]=delayed set,
# KEYS[2..]=task hashes; ARGV = received_at, queued_at, not_before, then per task
# QueuedTask.fields(). The record holds what its stream entry will (d_* fields) and names
# no entry yet ('delayed'), so no stream entry can run it before PROMOTE makes one.
ENQUEUE_DELAYED = """
local per = 8
for i = 2, #KEYS do
  local a = 3 + (i - 2) * per
  redis.call('HSET', KEYS[i], 'status', 'QUEUED', 'owner', ARGV[a + 3], 'function_id', ARGV[a + 2],
             'received_at', ARGV[1], 'queued_at', ARGV[2], 'attempts', ARGV[a + 6] - 1, 'entry', 'DELAYED_ENTRY',
             'not_before', ARGV[3], 'd_arguments', ARGV[a + 4], 'd_timeout', ARGV[a + 5], 'd_attempt', ARGV[a + 6],
             'd_retry', ARGV[a + 7], 'd_limits', ARGV[a + 8])
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[a + 1])
  SUBMIT_COUNTER
end
return #KEYS - 1
""".replace("DELAYED_ENTRY", DELAYED_ENTRY).replace(
    "SUBMIT_COUNTER", metrics.SUBMIT_COUNTER_LUA.format(fid="ARGV[a + 2]"))

# Delayed tasks whose time has come -> the stream. KEYS[1]=delayed set, KEYS[2]=stream;
# ARGV = now, limit, task key prefix, wake channel. A task that became final meanwhile (a
# cancel) only leaves the set. Returns how many reached the stream.
PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local moved = 0
for _, task_id in ipairs(due) do
  redis.call('ZREM', KEYS[1], task_id)
  local key = ARGV[3] .. task_id
  local r = redis.call('HMGET', key, 'status', 'entry', 'function_id', 'owner', 'd_arguments', 'd_timeout',
                       'd_attempt', 'd_retry', 'd_limits')
  if r[1] == 'QUEUED' and r[2] == 'DELAYED_ENTRY' and r[5] then
    local id = redis.call('XADD', KEYS[2], '*', 'task_id', task_id, 'function_id', r[3], 'owner', r[4] or '',
                          'arguments', r[5], 'timeout', r[6] or '', 'attempt', r[7] or '1', 'retry', r[8] or '',
                          'limits', r[9] or '')
    redis.call('HSET', key, 'entry', id)
    redis.call('HDEL', key, 'd_arguments', 'd_timeout', 'd_attempt', 'd_retry', 'd_limits')
    moved = moved + 1
  end
end
if moved > 0 then redis.call('PUBLISH', ARGV[4], moved) end
return moved
""".replace("DELAYED_ENTRY", DELAYED_ENTRY)

# A running task's progress: RUNNING only, so a late report never touches a final task nor
# recreates an expired hash. KEYS[1]=task hash; ARGV = fraction, message.
PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'RUNNING' then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1], 'progress_message', ARGV[2])
return 1
"""

SOURCES = {"enqueue": ENQUEUE, "claim": CLAIM, "start": START, "finish": FINISH, "requeue": REQUEUE,
           "repair": REPAIR, "purge": PURGE, "progress": PROGRESS, "enqueue_delayed": ENQUEUE_DELAYED,
           "promote": PROMOTE, "requeue_later": REQUEUE_LATER}
SHAS = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in SOURCES.items()}
