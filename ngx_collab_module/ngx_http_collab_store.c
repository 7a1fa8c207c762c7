
/*
 * Copyright (C) ngx_collab_module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <openssl/rand.h>
#include "ngx_http_collab_module.h"


/*
 * The document store: a Redis function library does sequence assignment,
 * the idempotency check, the append and the publish in one atomic step on
 * the document's hash tag, so that any number of nginx instances never hand
 * out the same seq.
 *
 * The library carries its version and the oldest module version it still
 * serves (collab_version).  A command connection loads it only when Redis
 * holds an older one (or none), and never replaces a newer one: during a
 * rolling upgrade the old and the new module share the newest library.
 * Check and load are one step (WATCH, MULTI ... EXEC).
 * Bump the version with any change of the Lua text, and the compat version
 * with any change that an older module cannot call.
 */


/* 10: collab_read_ro (replica reads), the cluster fence */
#define NGX_HTTP_COLLAB_STORE_VERSION  10
#define NGX_HTTP_COLLAB_STORE_COMPAT   1

/* a key every load changes, "collab:library" (see cluster_lock) */
#define NGX_HTTP_COLLAB_STORE_ATTEMPTS 3

#define ngx_http_collab_str(x)         #x
#define ngx_http_collab_xstr(x)        ngx_http_collab_str(x)


static const char  ngx_http_collab_store_lua[] =
"#!lua name=collab_v1\n"
/* SPUBLISH in the variant that a cluster loads (sharded pub/sub) */
"local PUB = 'PUBLISH'\n"
"local ranks = {none = 0, viewer = 1, commenter = 2, editor = 3, owner = 4}\n"
"local function rank(v)\n"
"  return ranks[v] or 0\n"
"end\n"
/* the effective role: the token's grant, then the ACL document (or the
 * configured default when there is none) */
"local function role_of(acl_key, user, groups, grant, default)\n"
"  local r = tonumber(grant) or 0\n"
"  local raw = redis.call('GET', acl_key)\n"
"  if not raw then\n"
"    return math.max(r, tonumber(default) or 0), false\n"
"  end\n"
"  local ok, acl = pcall(cjson.decode, raw)\n"
"  if not ok or type(acl) ~= 'table' then\n"
"    return r, raw\n"
"  end\n"
"  r = math.max(r, rank(acl.default))\n"
"  if type(acl.users) == 'table' then\n"
"    r = math.max(r, rank(acl.users[user]))\n"
"  end\n"
"  if type(acl.groups) == 'table' and groups ~= '' then\n"
"    for g in string.gmatch(groups, '[^,]+') do\n"
"      r = math.max(r, rank(acl.groups[g]))\n"
"    end\n"
"  end\n"
"  return r, raw\n"
"end\n"
/* a key written outside touch() follows the document's expiry */
"local function follow(key, state)\n"
"  if redis.call('PTTL', key) ~= -1 then return end\n"
"  local ttl = redis.call('PTTL', state)\n"
"  if ttl > 0 then redis.call('PEXPIRE', key, ttl) end\n"
"end\n"
/* at most one denial a second per document reaches the audit stream */
/* documents that do not exist get no audit stream: probing for names
 * cannot create keys */
"local function deny(audit, user, action)\n"
"  local base = string.sub(audit, 1, #audit - 5)\n"
"  if redis.call('EXISTS', base .. 'state', base .. 'acl') == 0 then\n"
"    return\n"
"  end\n"
"  if redis.call('SET', audit .. ':limit', '1', 'NX', 'PX', 1000) then\n"
"    local t = redis.call('TIME')\n"
"    redis.call('XADD', audit, 'MAXLEN', '~', 10000, '*', 'event', 'denied',\n"
"               'user', user, 'action', action, 'ts',\n"
"               string.format('%d', tonumber(t[1]) * 1000\n"
"                                   + math.floor(tonumber(t[2]) / 1000)))\n"
"    follow(audit, base .. 'state')\n"
"  end\n"
"end\n"
/* role, replid and replid2 of this node */
"local function replication()\n"
"  local info = redis.call('INFO', 'replication')\n"
"  return string.find(info, 'role:master', 1, true),\n"
"         string.match(info, 'master_replid:(%x+)'),\n"
"         string.match(info, 'master_replid2:(%x+)') or ''\n"
"end\n"
/* cluster: node S is a primary that serves slots and is not failing */
"local function serves(s)\n"
"  local nodes = '\\n' .. redis.call('CLUSTER', 'NODES')\n"
"  local at = string.find(nodes, '\\n' .. s .. ' ', 1, true)\n"
"  if not at then return false end\n"
"  local flags, slots = string.match(nodes,\n"
"    '^%S+ %S+ (%S+) %S+ %S+ %S+ %S+ %S+ ?([^\\n]*)', at + 1)\n"
"  if not flags then return false end\n"
"  flags = ',' .. flags .. ','\n"
"  return string.find(flags, ',master,', 1, true) ~= nil\n"
"    and string.find(flags, ',fail,', 1, true) == nil\n"
"    and string.find(flags, ',fail?,', 1, true) == nil\n"
"    and string.find(' ' .. slots, ' %d') ~= nil\n"
"end\n"
/* cluster, the fence passed does not match the stored one (rare: first
 * use under another fence, or a connection's fence not refreshed yet):
 * this node's fence now, and whether the document keeps its epoch.  The
 * stored "ID,S" names the node S that last wrote it.  S is this node under
 * another replid (restarted, or demoted and promoted again), or the
 * primary this one was promoted from (ID is our replid2), or S is a
 * replica now, failing, unknown, without slots: a tail may be lost, a new
 * epoch.  S a healthy primary serving slots: the document came whole by
 * MIGRATE (resharding), it keeps its epoch.  No fence: written by an older
 * module, it keeps its epoch. */
"local function cluster_fence(stored)\n"
"  local _, id, id2 = replication()\n"
"  local node = redis.call('CLUSTER', 'MYID')\n"
"  local fence = (id or '') .. ',' .. node\n"
"  if not stored or stored == fence then return true, fence end\n"
"  local was, on = string.match(stored, '^(%x*),(%x+)$')\n"
"  if not on then return true, fence end\n"
"  return on ~= node and was ~= id2 and serves(on), fence\n"
"end\n"
/* fence names the primary's tenure ('' with a single Redis): in Sentinel
 * mode its replication id, a document last used under another one may
 * have lost a tail that clients saw (replication is asynchronous), so it
 * gets a new epoch and its clients a fresh start.  In a cluster it is
 * "ID,ID2,NODE" (ID2: the replid this primary was promoted from, NODE its
 * node id), "ID,NODE" is stored, and a mismatch is judged by
 * cluster_fence().  A new log: every worker that knew the old one
 * resyncs its sessions */
"local function epoch_of(state, new, fence)\n"
"  fence = fence or ''\n"
"  local e\n"
"  if fence == '' then e = {redis.call('HGET', state, 'epoch')}\n"
"  else e = redis.call('HMGET', state, 'epoch', 'fence') end\n"
"  local cluster = string.find(fence, ',', 1, true)\n"
"  if cluster then fence = string.gsub(fence, ',%x*,', ',') end\n"
"  if e[1] and (fence == '' or e[2] == fence) then return e[1], false end\n"
"  if cluster then\n"
"    local keep\n"
"    keep, fence = cluster_fence(e[2])\n"
"    if e[1] and keep then\n"
"      if e[2] ~= fence then redis.call('HSET', state, 'fence', fence) end\n"
"      return e[1], false\n"
"    end\n"
"  end\n"
"  if e[1] then\n"
"    redis.call('HSET', state, 'epoch', new, 'fence', fence)\n"
"  else\n"
"    redis.call('HSET', state, 'epoch', new, 'head', 0)\n"
"    if fence ~= '' then redis.call('HSET', state, 'fence', fence) end\n"
"  end\n"
"  redis.call(PUB, string.sub(state, 1, #state - 6),\n"
"             '{\"type\":\"reset\",\"epoch\":\"' .. new .. '\"}')\n"
"  return new, not e[1]\n"
"end\n"
"local function fence()\n"
"  local master, id, id2 = replication()\n"
"  if not master then\n"
"    return redis.error_reply('READONLY not the primary')\n"
"  end\n"
"  if not id then return redis.error_reply('ERR no replication id') end\n"
/* a cluster's also names the primary this one was promoted from, and
 * the node, which keeps its id over restarts */
"  if PUB == 'SPUBLISH' then\n"
"    return id .. ',' .. id2 .. ',' .. redis.call('CLUSTER', 'MYID')\n"
"  end\n"
"  return id\n"
"end\n"
"local function head_of(state)\n"
"  return tonumber(redis.call('HGET', state, 'head') or '0')\n"
"end\n"
/* collab_doc_expire: every key of the document lives MS (and a sixteenth
 * more, so that one refresh in a sixteenth of MS is enough) after the last
 * write; 0: forever */
"local function touch(state, ms)\n"
"  if ms <= 0 or redis.call('PTTL', state) > ms then return end\n"
"  local base = string.sub(state, 1, #state - 5)\n"
"  ms = ms + math.floor(ms / 16)\n"
"  for _, k in ipairs({'state', 'log', 'ops', 'ops:prev', 'acl',\n"
"                      'audit'}) do\n"
"    redis.call('PEXPIRE', base .. k, ms)\n"
"  end\n"
"end\n"
/* the ops index in two generations, ops and ops:prev: once a window the
 * current one becomes the previous one, which expires a window later, so
 * a record lives one to two windows at O(1) per append; field '~r' holds
 * the start of the current one (op keys start with a digit) */
"local function op_find(ops, opk)\n"
"  local r = redis.call('HMGET', ops, opk, '~r')\n"
"  if r[1] or not r[2] then return r[1], r[2] end\n"
"  return redis.call('HGET', ops .. ':prev', opk), r[2]\n"
"end\n"
"local function op_record(ops, opk, sseq, rot, now, sts, window)\n"
"  if window <= 0 or (rot and now - tonumber(rot) < window) then\n"
"    redis.call('HSET', ops, opk, sseq)\n"
"    return\n"
"  end\n"
"  if rot or redis.call('EXISTS', ops) == 1 then\n"
"    redis.call('RENAME', ops, ops .. ':prev')\n"
"    redis.call('PEXPIRE', ops .. ':prev', window)\n"
"  end\n"
"  redis.call('HSET', ops, opk, sseq, '~r', sts)\n"
"  redis.call('PEXPIRE', ops, 2 * window)\n"
"end\n"
"local function ts_of(e)\n"
"  local f = e[2]\n"
"  for i = 1, #f - 1, 2 do\n"
"    if f[i] == 'ts' then return tonumber(f[i + 1]) or 0 end\n"
"  end\n"
"  return 0\n"
"end\n"
/* the first seq of lo..hi appended at cutoff or later (hi + 1: none);
 * ts grows with seq, so a binary search of single-entry reads */
"local function age_floor(log, lo, hi, cutoff)\n"
"  while lo <= hi do\n"
"    local mid = math.floor((lo + hi) / 2)\n"
"    local e = redis.call('XRANGE', log, string.format('%d', mid) .. '-0',\n"
"                         '+', 'COUNT', 1)[1]\n"
"    if not e or ts_of(e) >= cutoff then hi = mid - 1 else lo = mid + 1 end\n"
"  end\n"
"  return lo\n"
"end\n"
/* collab_log_retention, every few appends: the log keeps at most KEEP
 * entries and none older than AGE ms, but always every entry after the
 * snapshot, which is what a since the log cannot serve is served from */
"local function trim(state, log, seq, now, keep, age)\n"
"  local every = 64\n"
"  if keep > 0 then\n"
"    every = math.max(1, math.min(64, math.floor(keep / 8)))\n"
"  end\n"
"  if (keep <= 0 and age <= 0) or seq % every ~= 0 then return end\n"
"  local floor = tonumber(redis.call('HGET', state, 'seq') or '0') + 1\n"
"  local min = 1\n"
"  if keep > 0 then min = seq - keep + 1 end\n"
"  if age > 0 and min < floor then\n"
"    local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]\n"
"    if first and ts_of(first) < now - age then\n"
"      local fseq = tonumber(string.match(first[1], '^%d+'))\n"
"      min = math.max(min, age_floor(log, fseq, floor - 1, now - age))\n"
"    end\n"
"  end\n"
"  min = math.min(min, floor)\n"
"  if min > 1 then\n"
"    redis.call('XTRIM', log, 'MINID', string.format('%d', min) .. '-0')\n"
"  end\n"
"end\n"
/* collab_merge json-merge: a text-preserving JSON Merge Patch (RFC 7396).
 * Only objects are split into members; every other value (arrays too) is
 * kept as its source text, so numbers, escapes and [] survive exactly.
 * A text is {s = text, ms = text with no bracket inside a string, m}: the
 * scan reads ms, where %b skips an array at C speed, and remembers in m
 * the end of every object it passes, so that a member merged 64 levels
 * down costs one pass over the state, not one per level; values are
 * positions in s, copied once into the result. */
"local function jerr(why) error({invalid = why}) end\n"
"local function jws(s, i)\n"
"  return string.find(s, '[^ \\t\\r\\n]', i) or #s + 1\n"
"end\n"
"local function jstr(s, i)\n"
"  local j = i + 1\n"
"  while true do\n"
"    local k = string.find(s, '\"', j, true)\n"
"    if not k then jerr('string') end\n"
"    local b = k - 1\n"
"    while string.byte(s, b) == 92 do b = b - 1 end\n"
"    if (k - 1 - b) % 2 == 0 then return k + 1 end\n"
"    j = k + 1\n"
"  end\n"
"end\n"
/* true when no string of s holds a bracket (escapes dropped first) */
"local function jplain(s)\n"
"  local t = string.gsub(s, '\\\\.', '')\n"
"  local _, n1 = string.gsub(t, '[%[%]{}]', '')\n"
"  local bare = string.gsub(t, '\"[^\"]*\"', '')\n"
"  local _, n2 = string.gsub(bare, '[%[%]{}]', '')\n"
"  return n1 == n2\n"
"end\n"
/* s with escapes and the brackets of strings blanked, same length */
"local function jtext(s, plain)\n"
"  if plain then return {s = s, ms = s, m = {}} end\n"
"  local ms = string.gsub(s, '\\\\.', '__')\n"
"  ms = string.gsub(ms, '\"[^\"]*\"', function(x)\n"
"    if string.find(x, '[%[%]{}]') then\n"
"      return (string.gsub(x, '[%[%]{}]', '_'))\n"
"    end\n"
"  end)\n"
"  return {s = s, ms = ms, m = {}}\n"
"end\n"
"local function jbrackets(s, i)\n"
"  local _, e = string.find(s, '^%b[]', i)\n"
"  if not e then jerr('nesting') end\n"
"  return e + 1\n"
"end\n"
/* the end of the value at i */
"local function jval(x, i)\n"
"  local s, m = x.ms, x.m\n"
"  local c = string.byte(s, i)\n"
"  if c == 34 then return jstr(s, i) end\n"
"  if c == 91 then return jbrackets(s, i) end\n"
"  if c ~= 123 then\n"
"    local _, e = string.find(s, '^[-+.%w]+', i)\n"
"    if not e then jerr('value') end\n"
"    return e + 1\n"
"  end\n"
"  if m[i] then return m[i] end\n"
"  local open, n, j = {}, 0, i\n"
"  while true do\n"
"    local k = string.find(s, '[{}%[]', j)\n"
"    if not k then jerr('nesting') end\n"
"    local b = string.byte(s, k)\n"
"    if b == 91 then\n"
"      j = jbrackets(s, k)\n"
"    elseif b == 123 then\n"
"      n = n + 1\n"
"      open[n] = k\n"
"      j = k + 1\n"
"    else\n"
"      j = k + 1\n"
"      m[open[n]] = j\n"
"      n = n - 1\n"
"      if n == 0 then return j end\n"
"    end\n"
"  end\n"
"end\n"
"local function jutf8(c)\n"
"  if c < 128 then return string.char(c) end\n"
"  if c < 2048 then\n"
"    return string.char(192 + math.floor(c / 64), 128 + c % 64)\n"
"  end\n"
"  if c < 65536 then\n"
"    return string.char(224 + math.floor(c / 4096),\n"
"                       128 + math.floor(c / 64) % 64, 128 + c % 64)\n"
"  end\n"
"  return string.char(240 + math.floor(c / 262144),\n"
"                     128 + math.floor(c / 4096) % 64,\n"
"                     128 + math.floor(c / 64) % 64, 128 + c % 64)\n"
"end\n"
"local junesc = {b = '\\b', f = '\\f', n = '\\n', r = '\\r', t = '\\t'}\n"
/* the member name a key denotes: "\u00e9" and "é" are one member */
"local function jkey(raw)\n"
"  local s = string.sub(raw, 2, -2)\n"
"  if not string.find(s, '\\\\', 1, true) then return s end\n"
"  local out, i = {}, 1\n"
"  while true do\n"
"    local k = string.find(s, '\\\\', i, true)\n"
"    if not k then break end\n"
"    out[#out + 1] = string.sub(s, i, k - 1)\n"
"    local c = string.sub(s, k + 1, k + 1)\n"
"    if c == 'u' then\n"
"      local u = tonumber(string.sub(s, k + 2, k + 5), 16) or 0\n"
"      local lo = string.sub(s, k + 6, k + 7) == '\\\\u'\n"
"      if lo and u >= 55296 and u < 56320 then\n"
"        local l = tonumber(string.sub(s, k + 8, k + 11), 16) or 0\n"
"        if l >= 56320 and l < 57344 then\n"
"          u = 65536 + (u - 55296) * 1024 + l - 56320\n"
"          k = k + 6\n"
"        end\n"
"      end\n"
"      out[#out + 1] = jutf8(u)\n"
"      i = k + 6\n"
"    else\n"
"      out[#out + 1] = junesc[c] or c\n"
"      i = k + 2\n"
"    end\n"
"  end\n"
"  out[#out + 1] = string.sub(s, i)\n"
"  return table.concat(out)\n"
"end\n"
/* the members of the object at i: names, first spellings, value spans */
"local function jobj(x, i)\n"
"  local s, ms = x.s, x.ms\n"
"  local o = {keys = {}, raw = {}, at = {}, to = {}}\n"
"  i = jws(ms, i + 1)\n"
"  if string.byte(ms, i) == 125 then return o end\n"
"  while true do\n"
"    if string.byte(ms, i) ~= 34 then jerr('member') end\n"
"    local e = jstr(ms, i)\n"
"    local rk = string.sub(s, i, e - 1)\n"
"    local k = jkey(rk)\n"
"    i = jws(ms, e)\n"
"    if string.byte(ms, i) ~= 58 then jerr('colon') end\n"
"    i = jws(ms, i + 1)\n"
"    local ve = jval(x, i)\n"
"    if not o.raw[k] then\n"
"      o.keys[#o.keys + 1] = k\n"
"      o.raw[k] = rk\n"
"    end\n"
"    o.at[k], o.to[k] = i, ve\n"
"    i = jws(ms, ve)\n"
"    local c = string.byte(ms, i)\n"
"    if c == 125 then return o end\n"
"    if c ~= 44 then jerr('comma') end\n"
"    i = jws(ms, i + 1)\n"
"  end\n"
"end\n"
/* appends to out the patch [pi, pe) of p merged into the value at ti of
 * t (nil: none), in pieces joined once at the end: a result is never
 * copied level by level; members keep their place and text, new ones are
 * appended */
"local function jmerge(out, t, ti, p, pi, pe, depth)\n"
"  if string.byte(p.s, pi) ~= 123 then\n"
"    out[#out + 1] = string.sub(p.s, pi, pe - 1)\n"
"    return\n"
"  end\n"
"  if depth > 64 then jerr('depth') end\n"
"  local o = {keys = {}, raw = {}, at = {}, to = {}}\n"
"  if ti and string.byte(t.s, ti) == 123 then o = jobj(t, ti) end\n"
"  local q, sep = jobj(p, pi), '{'\n"
"  for _, k in ipairs(q.keys) do\n"
"    if not o.raw[k] then\n"
"      o.keys[#o.keys + 1] = k\n"
"      o.raw[k] = q.raw[k]\n"
"    end\n"
"  end\n"
"  for _, k in ipairs(o.keys) do\n"
"    local a, z = q.at[k], q.to[k]\n"
"    if not a then\n"
"      out[#out + 1] = sep .. o.raw[k] .. ':'\n"
"      out[#out + 1] = string.sub(t.s, o.at[k], o.to[k] - 1)\n"
"      sep = ','\n"
"    elseif z - a ~= 4 or string.sub(p.s, a, z - 1) ~= 'null' then\n"
"      out[#out + 1] = sep .. o.raw[k] .. ':'\n"
"      jmerge(out, t, o.at[k], p, a, z, depth + 1)\n"
"      sep = ','\n"
"    end\n"
"  end\n"
"  out[#out + 1] = (sep == '{') and '{}' or '}'\n"
"end\n"
/* the state after the patch: text, plain flag; or nil, status */
"local function merged(state, patch, max)\n"
"  local cur = redis.call('HMGET', state, 'data', 'plain')\n"
"  local i, j = jws(patch, 1), #patch\n"
"  while j > i and string.find(string.sub(patch, j, j), '^[ \\t\\r\\n]') do\n"
"    j = j - 1\n"
"  end\n"
"  patch = string.sub(patch, i, j)\n"
"  if not pcall(cjson.decode, patch) then return nil, -4 end\n"
"  local pplain = jplain(patch)\n"
"  local splain = cur[1] == false or cur[2] == '1'\n"
"  local out = {}\n"
"  local ok, err = pcall(jmerge, out, jtext(cur[1] or 'null', splain), 1,\n"
"                        jtext(patch, pplain), 1, #patch + 1, 1)\n"
"  if not ok then\n"
"    if type(err) == 'table' then return nil, -4 end\n"
"    error(err)\n"
"  end\n"
"  local r = table.concat(out)\n"
"  if #r > max then return nil, -3, #r end\n"
"  return r, (splain and pplain) and '1' or '0'\n"
"end\n"
/* keys: state log ops acl audit
 * args: epoch user id data base reject doc channel groups grant default
 *       client (the op key: #user ":" user #client ":" client id)
 *       merge (json-merge: the largest state in bytes; else empty),
 *       then retention: keep (entries) age (ms), op window (ms),
 *       doc expire (ms); absent or 0: off */
"local function append(keys, args)\n"
"  local state, log, ops = keys[1], keys[2], keys[3]\n"
"  local user, id, data = args[2], args[3], args[4]\n"
"  local role = role_of(keys[4], user, args[9], args[10], args[11])\n"
"  if role < 3 then\n"
"    deny(keys[5], user, 'delta')\n"
"    return {-2, role, ''}\n"
"  end\n"
"  local epoch = epoch_of(state, args[1], args[18])\n"
"  local client = args[12] or ''\n"
"  local opk = #user .. ':' .. user .. #client .. ':' .. client .. id\n"
"  local prev, rot = op_find(ops, opk)\n"
/* ack=replicated (REPLICATED): a write, so that the WAIT after it covers
 * the first store of this op too */
"  if prev then\n"
"    if args[19] == '1' then redis.call('HSET', state, 'retried', prev) end\n"
"    return {0, tonumber(prev), epoch}\n"
"  end\n"
"  local head = head_of(state)\n"
"  if args[6] == '1' and args[5] ~= '' and tonumber(args[5]) ~= head then\n"
"    touch(state, tonumber(args[17]) or 0)\n"
"    return {-1, head, epoch}\n"
"  end\n"
"  local json, plain, size\n"
"  if args[13] and args[13] ~= '' and args[13] ~= '0' then\n"
"    json, plain, size = merged(state, data, tonumber(args[13]))\n"
"    if not json then return {plain, size or 0, epoch} end\n"
"  end\n"
"  local seq = head + 1\n"
"  local t = redis.call('TIME')\n"
"  local ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
"  local sts = string.format('%d', ts)\n"
"  local sseq = string.format('%d', seq)\n"
"  redis.call('XADD', log, sseq .. '-0', 'seq', sseq, 'id', id,\n"
"             'user', user, 'ts', sts, 'data', data)\n"
"  if json then\n"
"    redis.call('HSET', state, 'head', sseq, 'ts', sts, 'seq', sseq,\n"
"               'data', json, 'plain', plain)\n"
"  else\n"
"    redis.call('HSET', state, 'head', sseq, 'ts', sts)\n"
"  end\n"
"  op_record(ops, opk, sseq, rot, ts, sts, tonumber(args[16]) or 0)\n"
"  redis.call(PUB, args[8], '{\"type\":\"delta\",\"doc\":\"' ..\n"
"    args[7] .. '\",\"seq\":' .. sseq .. ',\"id\":' .. cjson.encode(id) ..\n"
"    ',\"user\":' .. cjson.encode(user) .. ',\"ts\":' .. sts ..\n"
"    ',\"data\":' .. data .. '}')\n"
"  trim(state, log, seq, ts, tonumber(args[14]) or 0,\n"
"       tonumber(args[15]) or 0)\n"
"  touch(state, tonumber(args[17]) or 0)\n"
"  return {1, seq, epoch}\n"
"end\n"
/* keys: state log acl audit
 * args: epoch since count client_epoch user groups grant default budget
 *       expire (collab_doc_expire, for a state hash the read creates)
 * a user without a role learns nothing, not even whether the log exists;
 * entries stop once their bytes (data, id, user and 64 each) reach the
 * budget, always after one at least (no budget: a module that sends none) */
"local function read(keys, args)\n"
"  local state, log = keys[1], keys[2]\n"
"  local role, acl = role_of(keys[3], args[5], args[6], args[7], args[8])\n"
"  if role < 1 then\n"
"    deny(keys[4], args[5], 'subscribe')\n"
"    return {-2}\n"
"  end\n"
"  local epoch, created = epoch_of(state, args[1], args[11])\n"
"  if created then touch(state, tonumber(args[10]) or 0) end\n"
"  local since = tonumber(args[2])\n"
"  local count = tonumber(args[3])\n"
"  local head = head_of(state)\n"
"  local mode = 0\n"
"  local snap_seq, snap_data = 0, false\n"
"  if since < 0 or since > head or (args[4] ~= '' and args[4] ~= epoch)\n"
"  then\n"
"    mode = 1\n"
"  elseif since < head then\n"
"    local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)\n"
"    local fseq = head + 1\n"
"    if first[1] then fseq = tonumber(string.match(first[1][1], '^%d+')) end\n"
"    if since + 1 < fseq then mode = 1 end\n"
"  end\n"
"  if mode == 1 then\n"
"    local s = redis.call('HMGET', state, 'seq', 'data')\n"
"    if s[1] then snap_seq = tonumber(s[1]); snap_data = s[2] end\n"
"    since = snap_seq\n"
"  end\n"
"  local res = {epoch, head, mode, snap_seq, snap_data, role, acl}\n"
"  local budget = tonumber(args[9])\n"
"  local from = string.format('%d', since + 1) .. '-0'\n"
"  local left, used = count, 0\n"
/* in chunks: what is not sent is not read either */
"  while since < head and left > 0 do\n"
"    local n = math.min(left, 16)\n"
"    local entries = redis.call('XRANGE', log, from, '+', 'COUNT', n)\n"
"    for _, e in ipairs(entries) do\n"
"      local f, m = e[2], {}\n"
"      for i = 1, #f, 2 do m[f[i]] = f[i + 1] end\n"
"      local id, user, data = m['id'] or '', m['user'] or '',\n"
"                             m['data'] or 'null'\n"
"      res[#res + 1] = m['seq'] or ''\n"
"      res[#res + 1] = id\n"
"      res[#res + 1] = user\n"
"      res[#res + 1] = m['ts'] or '0'\n"
"      res[#res + 1] = data\n"
"      left = left - 1\n"
"      used = used + #data + #id + #user + 64\n"
"      if budget and used >= budget then left = 0; break end\n"
"    end\n"
"    if #entries < n then break end\n"
"    from = '(' .. entries[#entries][1]\n"
"  end\n"
"  return res\n"
"end\n"
/* --- library 10: collab_read_ro, for replica= (replica.c) ---
 * collab_read on a replica: the same keys, arguments and reply, or {-3},
 * "ask the primary", whenever the read would write or decide what only
 * the primary may: no role (the primary records the denial), no state
 * hash (the primary creates it), another fence (the primary starts a new
 * epoch), another client epoch or a since beyond the head (the replica
 * may only be behind) */
"local function read_ro(keys, args)\n"
"  local role = role_of(keys[3], args[5], args[6], args[7], args[8])\n"
"  if role < 1 then return {-3} end\n"
"  local e = redis.call('HMGET', keys[1], 'epoch', 'fence', 'head')\n"
"  if not e[1] then return {-3} end\n"
"  local fence = args[11] or ''\n"
"  if fence ~= '' and e[2] ~= fence then return {-3} end\n"
"  if args[4] ~= '' and args[4] ~= e[1] then return {-3} end\n"
"  if tonumber(args[2]) > tonumber(e[3] or '0') then return {-3} end\n"
"  return read(keys, args)\n"
"end\n"
/* --- end of library 10 --- */
/* keys: state acl audit
 * args: epoch seq data user groups grant default expire */
"local function setstate(keys, args)\n"
"  local state = keys[1]\n"
"  local role = role_of(keys[2], args[4], args[5], args[6], args[7])\n"
"  if role < 3 then\n"
"    deny(keys[3], args[4], 'state')\n"
"    return {-2, role, ''}\n"
"  end\n"
"  local epoch = epoch_of(state, args[1], args[9])\n"
"  touch(state, tonumber(args[8]) or 0)\n"
"  local seq = tonumber(args[2])\n"
"  local head = head_of(state)\n"
"  if seq > head then return {-1, head, epoch} end\n"
"  local cur = tonumber(redis.call('HGET', state, 'seq') or '-1')\n"
"  if seq < cur then return {0, cur, epoch} end\n"
"  redis.call('HSET', state, 'seq', seq, 'data', args[3])\n"
"  redis.call('HDEL', state, 'plain')\n"
"  return {1, seq, epoch}\n"
"end\n"
/* keys: acl audit state: the ACL for a worker that was told it changed;
 * the first worker to see a new version writes the audit entry */
"local function acl(keys, args)\n"
"  local raw = redis.call('GET', keys[1])\n"
"  local v, by = '', 'application'\n"
"  if raw then\n"
"    local ok, a = pcall(cjson.decode, raw)\n"
"    if ok and type(a) == 'table' then\n"
"      v = tostring(a.version or '')\n"
"      if type(a.updated_by) == 'string' then by = a.updated_by end\n"
"    end\n"
"  end\n"
"  local old = redis.call('HGET', keys[3], 'acl_version') or ''\n"
"  if raw and v ~= old then\n"
"    redis.call('HSET', keys[3], 'acl_version', v)\n"
"    local t = redis.call('TIME')\n"
"    redis.call('XADD', keys[2], 'MAXLEN', '~', 10000, '*', 'event', 'acl',\n"
"               'by', by, 'old', old, 'new', v, 'ts',\n"
"               string.format('%d', tonumber(t[1]) * 1000\n"
"                                   + math.floor(tonumber(t[2]) / 1000)))\n"
"    follow(keys[2], keys[3])\n"
"  end\n"
"  return raw or false\n"
"end\n"
/* keys: audit; args: user action */
"local function denied(keys, args)\n"
"  deny(keys[1], args[1], args[2])\n"
"  return 1\n"
"end\n"
/* keys: acl audit state channel
 * args: admin user groups grant version default body */
"local function may_admin(keys, args)\n"
"  if args[1] == '1' then return true end\n"
"  local role = role_of(keys[1], args[2], args[3], args[4], args[6])\n"
"  if role < 4 then\n"
"    deny(keys[2], args[2], 'acl')\n"
"    return false\n"
"  end\n"
"  return true\n"
"end\n"
"local function acl_get(keys, args)\n"
"  if not may_admin(keys, args) then return {-2} end\n"
"  local raw = redis.call('GET', keys[1])\n"
"  if raw then return {1, 0, raw} end\n"
"  return {1, 0}\n"
"end\n"
"local function acl_put(keys, args)\n"
"  if not may_admin(keys, args) then return {-2} end\n"
"  local cur = redis.call('GET', keys[1])\n"
"  local v = 0\n"
"  if cur then\n"
"    local ok, a = pcall(cjson.decode, cur)\n"
"    if ok and type(a) == 'table' then v = tonumber(a.version) or 0 end\n"
"  end\n"
"  if args[5] ~= '' and tonumber(args[5]) ~= v then return {-1, v} end\n"
"  local ok, new = pcall(cjson.decode, args[7])\n"
"  if not ok or type(new) ~= 'table' then return {-3, v} end\n"
"  new.version = v + 1\n"
"  new.updated_by = args[2]\n"
"  local raw = cjson.encode(new)\n"
"  redis.call('SET', keys[1], raw)\n"
"  redis.call('HSET', keys[3], 'acl_version', tostring(v + 1))\n"
"  local t = redis.call('TIME')\n"
"  redis.call('XADD', keys[2], 'MAXLEN', '~', 10000, '*', 'event', 'acl',\n"
"             'by', args[2], 'old', tostring(v), 'new', tostring(v + 1),\n"
"             'ts', string.format('%d', tonumber(t[1]) * 1000\n"
"                                 + math.floor(tonumber(t[2]) / 1000)))\n"
"  follow(keys[1], keys[3])\n"
"  follow(keys[2], keys[3])\n"
"  redis.call(PUB, keys[4], '{\"type\":\"acl\"}')\n"
"  return {1, v + 1, raw}\n"
"end\n"
/* presence: keys pres exp.  pres maps a session id to its entry, the
 * JSON object {"session","user","data"} the module built, and '~seq' to
 * the last pseq; exp scores each session with its expiry time (ms), which
 * the nginx that holds the session pushes forward (collab_presence_ttl).
 * pseq orders the presence messages of a document: the time in us, or
 * one more than the last, so it never goes back, even over a lost key */
"local function pres_seq(pres)\n"
"  local t = redis.call('TIME')\n"
"  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
"  local last = tonumber(redis.call('HGET', pres, '~seq') or '0')\n"
"  local n = string.format('%d', math.max(us, last + 1))\n"
"  redis.call('HSET', pres, '~seq', n)\n"
"  return n\n"
"end\n"
"local function pres_now()\n"
"  local t = redis.call('TIME')\n"
"  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
"end\n"
/* the leave is published only by whoever deletes the entry: once */
"local function pres_leave(pres, exp, chan, doc, sid, reason)\n"
"  redis.call('ZREM', exp, sid)\n"
"  local v = redis.call('HGET', pres, sid)\n"
"  if not v or redis.call('HDEL', pres, sid) ~= 1 then return 0 end\n"
"  local e = string.find(v, ',\"data\":', 1, true) or #v\n"
"  redis.call(PUB, chan, '{\"type\":\"presence\",\"doc\":\"' .. doc ..\n"
"    '\",\"pseq\":' .. pres_seq(pres) .. ',\"left\":true,\"reason\":\"' ..\n"
"    reason .. '\",' .. string.sub(v, 2, e - 1) .. '}')\n"
"  return 1\n"
"end\n"
/* entries whose nginx stopped refreshing them, 64 at a time */
"local function pres_prune(pres, exp, chan, doc, now)\n"
"  local old = redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, 64)\n"
"  for _, sid in ipairs(old) do\n"
"    pres_leave(pres, exp, chan, doc, sid, 'expired')\n"
"  end\n"
"end\n"
/* the keys outlive their entries, and go when no nginx refreshes them */
"local function pres_keep(pres, exp, ttl)\n"
"  redis.call('PEXPIRE', pres, 2 * ttl)\n"
"  redis.call('PEXPIRE', exp, 2 * ttl)\n"
"end\n"
/* args: channel doc session entry ttl */
"local function presence(keys, args)\n"
"  local pres, exp = keys[1], keys[2]\n"
"  local now, ttl = pres_now(), tonumber(args[5])\n"
"  pres_prune(pres, exp, args[1], args[2], now)\n"
"  local n = pres_seq(pres)\n"
"  redis.call('HSET', pres, args[3], args[4])\n"
"  redis.call('ZADD', exp, now + ttl, args[3])\n"
"  pres_keep(pres, exp, ttl)\n"
"  redis.call(PUB, args[1], '{\"type\":\"presence\",\"doc\":\"' ..\n"
"    args[2] .. '\",\"pseq\":' .. n .. ',' .. string.sub(args[4], 2))\n"
"  return 1\n"
"end\n"
/* args: channel doc ttl session...: the live sessions of one nginx;
 * returns those that have no entry (it expired, or Redis lost it): their
 * nginx sets them again */
"local function presence_refresh(keys, args)\n"
"  local pres, exp = keys[1], keys[2]\n"
"  local lost = {}\n"
"  if redis.call('EXISTS', exp) == 0 then\n"
"    for i = 4, #args do lost[#lost + 1] = args[i] end\n"
"    return lost\n"
"  end\n"
"  local now, ttl = pres_now(), tonumber(args[3])\n"
"  pres_prune(pres, exp, args[1], args[2], now)\n"
"  for i = 4, #args do\n"
"    if redis.call('HEXISTS', pres, args[i]) == 0 then\n"
"      lost[#lost + 1] = args[i]\n"
"    else\n"
"      redis.call('ZADD', exp, 'XX', now + ttl, args[i])\n"
"    end\n"
"  end\n"
"  pres_keep(pres, exp, ttl)\n"
"  return lost\n"
"end\n"
/* args: channel doc session reason */
"local function presence_leave(keys, args)\n"
"  local pres, exp = keys[1], keys[2]\n"
"  pres_prune(pres, exp, args[1], args[2], pres_now())\n"
"  return pres_leave(pres, exp, args[1], args[2], args[3], args[4])\n"
"end\n"
/* args: channel doc max: {pseq, count, entry...}, at most max entries */
"local function presence_list(keys, args)\n"
"  local pres, exp = keys[1], keys[2]\n"
"  pres_prune(pres, exp, args[1], args[2], pres_now())\n"
"  local n = redis.call('HGET', pres, '~seq')\n"
"  if not n then return {'0', 0} end\n"
"  local max = tonumber(args[3])\n"
"  local res = {n, redis.call('HLEN', pres) - 1}\n"
"  if max <= 0 then return res end\n"
"  local r = redis.call('HRANDFIELD', pres, max + 1, 'WITHVALUES')\n"
"  for i = 1, #r, 2 do\n"
"    if r[i] ~= '~seq' and #res < max + 2 then res[#res + 1] = r[i + 1] end\n"
"  end\n"
"  return res\n"
"end\n"
"redis.register_function('collab_acl_get', acl_get)\n"
"redis.register_function('collab_presence', presence)\n"
"redis.register_function('collab_presence_refresh', presence_refresh)\n"
"redis.register_function('collab_presence_leave', presence_leave)\n"
"redis.register_function('collab_presence_list', presence_list)\n"
"redis.register_function('collab_acl_put', acl_put)\n"
"redis.register_function('collab_append', append)\n"
"redis.register_function('collab_read', read)\n"
"redis.register_function('collab_state', setstate)\n"
"redis.register_function('collab_acl', acl)\n"
"redis.register_function('collab_deny', denied)\n"
"redis.register_function{function_name = 'collab_read_ro',\n"
"  callback = read_ro, flags = {'no-writes'}}\n"
"redis.register_function{function_name = 'collab_fence',\n"
"  callback = fence, flags = {'no-writes'}}\n"
/* {version, oldest module version served[, 1: the sharded variant]} */
"redis.register_function{function_name = 'collab_version',\n"
"  callback = function() return {"
    ngx_http_collab_xstr(NGX_HTTP_COLLAB_STORE_VERSION) ", "
    ngx_http_collab_xstr(NGX_HTTP_COLLAB_STORE_COMPAT)
    ", PUB == 'SPUBLISH' and 1 or nil} end,\n"
"  flags = {'no-writes'}}\n";


static void ngx_http_collab_store_role_args(ngx_http_collab_session_t *s,
    ngx_str_t *doc, const char **argv, size_t *argvlen, u_char *buf);
static void ngx_http_collab_store_retain_args(ngx_http_collab_loc_conf_t *conf,
    const char **argv, size_t *argvlen, u_char buf[4][NGX_INT64_LEN]);
static ngx_int_t ngx_http_collab_store_check(redisAsyncContext *ac,
    ngx_uint_t attempt);
static void ngx_http_collab_store_version_reply(redisAsyncContext *ac,
    void *r, void *data);
static ngx_int_t ngx_http_collab_store_sharded(const char **text,
    size_t *len);
static ngx_int_t ngx_http_collab_store_load(redisAsyncContext *ac,
    ngx_uint_t attempt);
static void ngx_http_collab_store_loaded(redisAsyncContext *ac,
    ngx_http_collab_redis_t *rc);
static ngx_int_t ngx_http_collab_store_fence_ask(redisAsyncContext *ac,
    void *data);
static void ngx_http_collab_store_fence_reply(redisAsyncContext *ac,
    void *r, void *data);
static void ngx_http_collab_store_version_parse(redisReply *reply,
    int64_t *version, int64_t *compat, ngx_uint_t *sharded);
static void ngx_http_collab_store_fence_arg(ngx_http_collab_cmd_t *cmd,
    ngx_str_t *doc, const char **argv, size_t *argvlen, ngx_uint_t i);
static void ngx_http_collab_store_load_reply(redisAsyncContext *ac,
    void *r, void *data);
static ngx_http_collab_msg_t *ngx_http_collab_store_refusal(
    ngx_http_collab_cmd_t *cmd, ngx_int_t status, int64_t n);
static void ngx_http_collab_store_append_reply(ngx_http_collab_cmd_t *cmd,
    redisReply *reply);
static ngx_http_collab_msg_t *ngx_http_collab_store_ack(
    ngx_http_collab_cmd_t *cmd, int64_t seq);
static void ngx_http_collab_store_replicate(ngx_http_collab_cmd_t *cmd,
    int64_t seq);
static void ngx_http_collab_store_wait_next(ngx_http_collab_redis_t *rc);
static void ngx_http_collab_store_wait_reply(ngx_http_collab_cmd_t *cmd,
    redisReply *reply);
static void ngx_http_collab_store_wait_answer(ngx_http_collab_redis_t *rc,
    ngx_uint_t ok, ngx_uint_t n);
static void ngx_http_collab_store_answered(ngx_http_collab_cmd_t *cmd,
    ngx_http_collab_msg_t *m);
static void ngx_http_collab_store_woke(ngx_http_collab_session_t *s);
static ngx_uint_t ngx_http_collab_store_replicas_short(
    ngx_http_collab_redis_t *rc);
static void ngx_http_collab_store_state_reply(ngx_http_collab_cmd_t *cmd,
    redisReply *reply);
static void ngx_http_collab_store_read_reply(ngx_http_collab_cmd_t *cmd,
    redisReply *reply);
static ngx_int_t ngx_http_collab_store_fetch_on(ngx_http_collab_session_t *s,
    ngx_http_collab_get_t *g, ngx_uint_t primary);
static ngx_uint_t ngx_http_collab_store_ask_primary(redisReply *reply);
static ngx_int_t ngx_http_collab_store_read_send(
    ngx_http_collab_session_t *s, ngx_http_collab_cmd_t *cmd, ngx_str_t *doc,
    int64_t since, ngx_uint_t count, ngx_str_t *client_epoch, size_t budget,
    ngx_uint_t primary);
static void ngx_http_collab_store_fetch_reply(ngx_http_collab_cmd_t *cmd,
    redisReply *reply);
static void ngx_http_collab_store_read_decode(redisReply *reply,
    ngx_http_collab_read_t *rd);
static ngx_int_t ngx_http_collab_store_triple(redisReply *reply,
    ngx_int_t *status, int64_t *seq);
static ngx_int_t ngx_http_collab_store_event_delta(u_char *p, size_t len,
    ngx_str_t *doc, uint64_t *seq);
static void ngx_http_collab_store_acl_reply(ngx_http_collab_cmd_t *cmd,
    redisReply *reply);
static void ngx_http_collab_store_acl_admin_reply(ngx_http_collab_cmd_t *cmd,
    redisReply *reply);
static void ngx_http_collab_store_presence_refresh_reply(
    ngx_http_collab_cmd_t *cmd, redisReply *reply);
static void ngx_http_collab_store_presence_list_reply(
    ngx_http_collab_cmd_t *cmd, redisReply *reply);
static void ngx_http_collab_store_acl_admin_decode(redisReply *reply,
    ngx_http_collab_acl_admin_t *res);


ngx_int_t
ngx_http_collab_store_setup(ngx_http_collab_redis_t *rc)
{
    if (ngx_http_collab_store_check(rc->ac, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    rc->setup_pending++;

    return NGX_OK;
}


/*
 * WATCH makes check and load one step: a load by another module between
 * them aborts ours (EXEC replies nil), and the version is asked again.
 */

static ngx_int_t
ngx_http_collab_store_check(redisAsyncContext *ac, ngx_uint_t attempt)
{
    u_char       lock[NGX_HTTP_COLLAB_KEY_MAX];
    const char  *argv[3];
    size_t       argvlen[3];

    argv[0] = "WATCH";
    argvlen[0] = 5;
    argv[1] = (const char *) lock;
    argvlen[1] = ngx_http_collab_cluster_lock(ac->data, lock);

    if (redisAsyncCommandArgv(ac, NULL, NULL, 2, argv, argvlen) != REDIS_OK) {
        return NGX_ERROR;
    }

    argv[0] = "FCALL";
    argvlen[0] = 5;
    argv[1] = "collab_version";
    argvlen[1] = 14;
    argv[2] = "0";
    argvlen[2] = 1;

    if (redisAsyncCommandArgv(ac, ngx_http_collab_store_version_reply,
                              (void *) attempt, 3, argv, argvlen)
        != REDIS_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* the library in Redis: loaded when older than ours or missing */

static void
ngx_http_collab_store_version_reply(redisAsyncContext *ac, void *r,
    void *data)
{
    int64_t                   version, compat;
    ngx_uint_t                sharded;
    const char               *argv[2];
    size_t                    argvlen[2];
    redisReply               *reply;
    ngx_http_collab_redis_t  *rc;

    rc = ac->data;
    reply = r;

    if (reply == NULL) {
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR
        && ngx_strstr(reply->str, "not found") == NULL)
    {
        ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                      "collab: asking Redis for the function library "
                      "version failed%s: %s",
                      ngx_strstr(reply->str, "unknown command")
                      ? " (Redis 7.0 or newer is required)" : "",
                      reply->str);
        redisAsyncDisconnect(ac);
        return;
    }

    /* "function not found": no library, or one older than collab_version */

    ngx_http_collab_store_version_parse(reply, &version, &compat, &sharded);

    /* a cluster's library publishes with SPUBLISH, any other with PUBLISH */

    if (version == NGX_HTTP_COLLAB_STORE_VERSION
        && sharded != (ngx_http_collab_worker->cluster != NULL))
    {
        version = 0;
    }

    if (version < NGX_HTTP_COLLAB_STORE_VERSION) {
        ngx_log_error(NGX_LOG_NOTICE, rc->log, 0,
                      "collab: loading the Redis function library version "
                      "%d (Redis had %L)", NGX_HTTP_COLLAB_STORE_VERSION,
                      version);

        if (ngx_http_collab_store_load(ac, (ngx_uint_t) data) != NGX_OK) {
            redisAsyncDisconnect(ac);
        }

        return;
    }

    if (version > NGX_HTTP_COLLAB_STORE_VERSION) {

        if (compat > NGX_HTTP_COLLAB_STORE_VERSION) {
            ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                          "collab: Redis holds the function library "
                          "version %L, which serves modules of version %L "
                          "and newer; this module is version %d and does "
                          "not replace a newer library: upgrade the module",
                          version, compat, NGX_HTTP_COLLAB_STORE_VERSION);

            /* no commands on this connection; retried with a backoff */
            redisAsyncDisconnect(ac);
            return;
        }

        ngx_log_error(NGX_LOG_NOTICE, rc->log, 0,
                      "collab: keeping the newer Redis function library "
                      "version %L (this module's is %d)", version,
                      NGX_HTTP_COLLAB_STORE_VERSION);
    }

    argv[0] = "UNWATCH";
    argvlen[0] = 7;

    if (redisAsyncCommandArgv(ac, NULL, NULL, 1, argv, argvlen) != REDIS_OK) {
        redisAsyncDisconnect(ac);
        return;
    }

    ngx_http_collab_store_loaded(ac, rc);
}


/*
 * replica=: whether the library that a replica holds (collab_version's
 * reply) serves this module, collab_read_ro included
 */

ngx_int_t
ngx_http_collab_store_version_ok(redisReply *reply)
{
    int64_t     version, compat;
    ngx_uint_t  sharded;

    if (reply == NULL) {
        return NGX_DECLINED;
    }

    ngx_http_collab_store_version_parse(reply, &version, &compat, &sharded);

    if (version < NGX_HTTP_COLLAB_STORE_VERSION
        || compat > NGX_HTTP_COLLAB_STORE_VERSION || sharded)
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* collab_version's reply: {version, oldest module served[, 1: sharded]};
 * 0 and 0 for anything else (no library, an error) */

static void
ngx_http_collab_store_version_parse(redisReply *reply, int64_t *version,
    int64_t *compat, ngx_uint_t *sharded)
{
    *version = 0;
    *compat = 0;

    if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 2
        && reply->element[0]->type == REDIS_REPLY_INTEGER
        && reply->element[1]->type == REDIS_REPLY_INTEGER)
    {
        *version = reply->element[0]->integer;
        *compat = reply->element[1]->integer;
    }

    *sharded = (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 3
                && reply->element[2]->type == REDIS_REPLY_INTEGER
                && reply->element[2]->integer == 1);
}


/*
 * The library is there; with Sentinel or a cluster this primary fences the
 * logs: asked on every connect, as a failover changes the replid.
 */

static void
ngx_http_collab_store_loaded(redisAsyncContext *ac,
    ngx_http_collab_redis_t *rc)
{
    rc->fence_len = 0;
    rc->fence_asking = 0;

    if (rc->mcf->sentinel_master.len == 0 && rc->node == 0) {
        if (--rc->setup_pending == 0) {
            ngx_http_collab_redis_setup_done(rc);
        }

        return;
    }

    if (ngx_http_collab_store_fence_ask(ac, NULL) != NGX_OK) {
        redisAsyncDisconnect(ac);
    }
}


/*
 * Cluster: each map (every second) asks a node's ready command connection
 * for its fence again.  A replid changes without a failover too (a backlog
 * created anew), and a node demoted to a replica answers READONLY: the
 * connection is dropped, so that promoted again it is asked on a new one,
 * and a primary that a seed's map left out (a partial view) keeps its own.
 */

void
ngx_http_collab_store_fence_refresh(ngx_http_collab_redis_t *rc)
{
    if (rc->ac == NULL || rc->state != NGX_HTTP_COLLAB_REDIS_READY
        || rc->fence_asking)
    {
        return;
    }

    if (ngx_http_collab_store_fence_ask(rc->ac, rc) == NGX_OK) {
        rc->fence_asking = 1;
    }
}


/* data: NULL at setup, the connection when asked again */

static ngx_int_t
ngx_http_collab_store_fence_ask(redisAsyncContext *ac, void *data)
{
    const char  *argv[3];
    size_t       argvlen[3];

    argv[0] = "FCALL";
    argvlen[0] = 5;
    argv[1] = "collab_fence";
    argvlen[1] = sizeof("collab_fence") - 1;
    argv[2] = "0";
    argvlen[2] = 1;

    if (redisAsyncCommandArgv(ac, ngx_http_collab_store_fence_reply, data,
                              3, argv, argvlen)
        != REDIS_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_collab_store_fence_reply(redisAsyncContext *ac, void *r,
    void *data)
{
    redisReply               *reply;
    ngx_http_collab_redis_t  *rc;

    rc = ac->data;
    reply = r;

    if (data) {
        rc->fence_asking = 0;
    }

    if (reply == NULL) {
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        /* READONLY: a replica, the sentinels (or the map) are asked again */

        if (data) {
            /* demoted: expected in a failover */
            ngx_log_error(NGX_LOG_NOTICE, rc->log, 0,
                          "collab: redis %s connection to \"%V\": %s",
                          rc->name, &rc->addr, reply->str);
            ngx_http_collab_redis_kick_later(rc, "no longer a primary");
            return;
        }

        ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                      "collab: redis %s connection to \"%V\" is not to "
                      "the primary: %s", rc->name, &rc->addr, reply->str);
        redisAsyncDisconnect(ac);
        return;
    }

    if (reply->type != REDIS_REPLY_STRING || reply->len == 0
        || reply->len > sizeof(rc->fence))
    {
        ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                      "collab: unexpected reply to collab_fence");
        redisAsyncDisconnect(ac);
        return;
    }

    rc->fence_len = reply->len;
    ngx_memcpy(rc->fence, reply->str, reply->len);

    if (data == NULL && --rc->setup_pending == 0) {
        ngx_http_collab_redis_setup_done(rc);
    }
}


/*
 * Argument i: the fence of the primary the document's commands go to, for
 * epoch_of(); empty with a single Redis.  Sets cmd->fence_arg so that
 * ngx_http_collab_cluster_format() finds it in the command text: a command
 * redirected to another node gets that node's (cluster_resend()).
 */

static void
ngx_http_collab_store_fence_arg(ngx_http_collab_cmd_t *cmd, ngx_str_t *doc,
    const char **argv, size_t *argvlen, ngx_uint_t i)
{
    ngx_http_collab_redis_t  *rc;

    rc = ngx_http_collab_redis_for_doc(doc, 0);

    argv[i] = (const char *) rc->fence;
    argvlen[i] = rc->fence_len;
    cmd->fence_arg = i;
}


/* the library of a cluster: SPUBLISH, to the shard that owns the channel */

static ngx_int_t
ngx_http_collab_store_sharded(const char **text, size_t *len)
{
    u_char         *p, *pub;
    size_t          n;
    static u_char  *sharded;

    n = sizeof(ngx_http_collab_store_lua) - 1;

    if (sharded == NULL) {
        pub = (u_char *) ngx_strstr(ngx_http_collab_store_lua, "'PUBLISH'");
        if (pub == NULL) {
            return NGX_ERROR;
        }

        /* lives as long as the worker */
        p = ngx_alloc(n + 1, ngx_cycle->log);
        if (p == NULL) {
            return NGX_ERROR;
        }

        sharded = p;
        p = ngx_cpymem(p, ngx_http_collab_store_lua,
                       pub + 1 - (u_char *) ngx_http_collab_store_lua);
        *p++ = 'S';
        ngx_memcpy(p, pub + 1, n - (pub + 1 - (u_char *)
                                       ngx_http_collab_store_lua));
    }

    *text = (const char *) sharded;
    *len = n + 1;

    return NGX_OK;
}


static ngx_int_t
ngx_http_collab_store_load(redisAsyncContext *ac, ngx_uint_t attempt)
{
    u_char       lock[NGX_HTTP_COLLAB_KEY_MAX];
    const char  *argv[4];
    size_t       argvlen[4];

    argv[0] = "MULTI";
    argvlen[0] = 5;

    if (redisAsyncCommandArgv(ac, NULL, NULL, 1, argv, argvlen) != REDIS_OK) {
        return NGX_ERROR;
    }

    argv[0] = "FUNCTION";
    argvlen[0] = 8;
    argv[1] = "LOAD";
    argvlen[1] = 4;
    argv[2] = "REPLACE";
    argvlen[2] = 7;
    argv[3] = ngx_http_collab_store_lua;
    argvlen[3] = sizeof(ngx_http_collab_store_lua) - 1;

    if (ngx_http_collab_worker->cluster) {
        if (ngx_http_collab_store_sharded(&argv[3], &argvlen[3]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (redisAsyncCommandArgv(ac, NULL, NULL, 4, argv, argvlen) != REDIS_OK) {
        return NGX_ERROR;
    }

    argv[0] = "INCR";
    argvlen[0] = 4;
    argv[1] = (const char *) lock;
    argvlen[1] = ngx_http_collab_cluster_lock(ac->data, lock);

    if (redisAsyncCommandArgv(ac, NULL, NULL, 2, argv, argvlen) != REDIS_OK) {
        return NGX_ERROR;
    }

    argv[0] = "EXEC";
    argvlen[0] = 4;

    if (redisAsyncCommandArgv(ac, ngx_http_collab_store_load_reply,
                              (void *) attempt, 1, argv, argvlen)
        != REDIS_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_collab_store_load_reply(redisAsyncContext *ac, void *r, void *data)
{
    ngx_uint_t                attempt;
    redisReply               *reply, *load;
    ngx_http_collab_redis_t  *rc;

    rc = ac->data;
    reply = r;
    attempt = (ngx_uint_t) data;

    if (reply == NULL) {
        return;
    }

    if (reply->type == REDIS_REPLY_NIL) {
        /* another module loaded a library meanwhile: look again */

        ngx_log_error(NGX_LOG_NOTICE, rc->log, 0,
                      "collab: the Redis function library changed while "
                      "loading it, checking its version again");

        if (attempt >= NGX_HTTP_COLLAB_STORE_ATTEMPTS
            || ngx_http_collab_store_check(ac, attempt + 1) != NGX_OK)
        {
            redisAsyncDisconnect(ac);
        }

        return;
    }

    load = (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1)
           ? reply->element[0] : reply;

    if (load->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, rc->log, 0,
                      "collab: loading the Redis function library failed "
                      "(Redis 7.0 or newer is required): %s", load->str);
        redisAsyncDisconnect(ac);
        return;
    }

    ngx_http_collab_store_loaded(ac, rc);
}


/* what the functions compute a role from: groups, grant, default role */

static void
ngx_http_collab_store_role_args(ngx_http_collab_session_t *s, ngx_str_t *doc,
    const char **argv, size_t *argvlen, u_char *buf)
{
    argv[0] = s->groups.len ? (char *) s->groups.data : "";
    argvlen[0] = s->groups.len;

    buf[0] = (u_char) ('0' + ngx_http_collab_acl_grant(s, doc));
    argv[1] = (char *) &buf[0];
    argvlen[1] = 1;

    buf[1] = (u_char) ('0' + ngx_http_collab_default_role(s->conf));
    argv[2] = (char *) &buf[1];
    argvlen[2] = 1;
}


/* retention of collab_append: log entries, log age, op window, expiry */

static void
ngx_http_collab_store_retain_args(ngx_http_collab_loc_conf_t *conf,
    const char **argv, size_t *argvlen, u_char buf[4][NGX_INT64_LEN])
{
    argv[0] = (char *) buf[0];
    argvlen[0] = ngx_sprintf(buf[0], "%ui", conf->log_keep) - buf[0];
    argv[1] = (char *) buf[1];
    argvlen[1] = ngx_sprintf(buf[1], "%M", conf->log_age) - buf[1];
    argv[2] = (char *) buf[2];
    argvlen[2] = ngx_sprintf(buf[2], "%M", conf->op_window) - buf[2];
    argv[3] = (char *) buf[3];
    argvlen[3] = ngx_sprintf(buf[3], "%M", conf->doc_expire) - buf[3];
}


/* the one place that spells the Redis keys and the channel of a document */

size_t
ngx_http_collab_key(u_char *buf, ngx_str_t *doc, const char *suffix)
{
    u_char  *p;

    p = ngx_sprintf(buf, "collab:{%V}%s", doc, suffix);

    return p - buf;
}


/*
 * A candidate epoch, used only when a log is created: a random 64-bit
 * base drawn once per worker plus a counter, unique without a call into
 * the random generator for every delta.
 */

void
ngx_http_collab_store_epoch(u_char *epoch)
{
    uint64_t           v;
    ngx_msec_t         now;

    static uint64_t    base, counter;
    static ngx_uint_t  seeded;

    if (!seeded) {
        if (RAND_bytes((u_char *) &base, sizeof(base)) != 1) {
            now = ngx_current_msec;
            base = ((uint64_t) ngx_pid << 32) ^ now;
        }

        seeded = 1;
    }

    v = base + counter++ * 0x9e3779b97f4a7c15ULL;

    ngx_hex_dump(epoch, (u_char *) &v, sizeof(v));
}


ngx_int_t
ngx_http_collab_store_append(ngx_http_collab_session_t *s, ngx_str_t *doc,
    ngx_str_t *id, ngx_str_t *data, int64_t base, ngx_uint_t slot)
{
    u_char                  kstate[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  klog[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  kops[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  kacl[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  kaudit[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  chan[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  epoch[NGX_HTTP_COLLAB_EPOCH_LEN];
    u_char                  sbase[NGX_INT64_LEN];
    u_char                  smax[NGX_SIZE_T_LEN];
    u_char                  role[2];
    u_char                  retain[4][NGX_INT64_LEN];
    const char             *argv[27];
    size_t                  argvlen[27];
    ngx_int_t               rc;
    ngx_http_collab_cmd_t  *cmd;
    ngx_http_collab_msg_t  *m;

    if (ngx_http_collab_store_replicas_short(
                                   ngx_http_collab_redis_for_doc(doc, 0)))
    {
        ngx_http_collab_reply(s, slot,
            ngx_http_collab_msg_error("nack", "unavailable", doc, id,
                                      "the replicas do not confirm deltas "
                                      "now; retry later with the same id"));
        return NGX_OK;
    }

    cmd = ngx_http_collab_cmd_alloc(s, doc->len + id->len);
    if (cmd == NULL) {
        return NGX_ERROR;
    }

    cmd->handler = ngx_http_collab_store_append_reply;
    cmd->slot = slot;
    cmd->doc.data = cmd->data;
    cmd->doc.len = doc->len;
    ngx_memcpy(cmd->doc.data, doc->data, doc->len);
    cmd->id.data = cmd->data + doc->len;
    cmd->id.len = id->len;
    ngx_memcpy(cmd->id.data, id->data, id->len);

    ngx_http_collab_store_epoch(epoch);

    argv[0] = "FCALL";
    argvlen[0] = 5;
    argv[1] = "collab_append";
    argvlen[1] = 13;
    argv[2] = "5";
    argvlen[2] = 1;
    argv[3] = (char *) kstate;
    argvlen[3] = ngx_http_collab_key(kstate, doc, ":state");
    argv[4] = (char *) klog;
    argvlen[4] = ngx_http_collab_key(klog, doc, ":log");
    argv[5] = (char *) kops;
    argvlen[5] = ngx_http_collab_key(kops, doc, ":ops");
    argv[6] = (char *) kacl;
    argvlen[6] = ngx_http_collab_key(kacl, doc, ":acl");
    argv[7] = (char *) kaudit;
    argvlen[7] = ngx_http_collab_key(kaudit, doc, ":audit");
    argv[8] = (char *) epoch;
    argvlen[8] = NGX_HTTP_COLLAB_EPOCH_LEN;
    argv[9] = (char *) s->user.data;
    argvlen[9] = s->user.len;
    argv[10] = (char *) id->data;
    argvlen[10] = id->len;
    argv[11] = (char *) data->data;
    argvlen[11] = data->len;
    argv[12] = (char *) sbase;
    argvlen[12] = base < 0 ? 0 : (size_t) (ngx_sprintf(sbase, "%L", base)
                                           - sbase);
    argv[13] = s->conf->conflict == NGX_HTTP_COLLAB_CONFLICT_REJECT
               ? "1" : "0";
    argvlen[13] = 1;
    argv[14] = (char *) doc->data;
    argvlen[14] = doc->len;
    argv[15] = (char *) chan;
    argvlen[15] = ngx_http_collab_key(chan, doc, "");
    ngx_http_collab_store_role_args(s, doc, &argv[16], &argvlen[16], role);
    argv[19] = (char *) s->client;
    argvlen[19] = s->client_len;
    argv[20] = "";
    argvlen[20] = 0;

    if (s->conf->merge == NGX_HTTP_COLLAB_MERGE_JSON) {
        argv[20] = (char *) smax;
        argvlen[20] = ngx_sprintf(smax, "%uz", s->conf->state_max) - smax;
    }

    ngx_http_collab_store_retain_args(s->conf, &argv[21], &argvlen[21],
                                      retain);
    ngx_http_collab_store_fence_arg(cmd, doc, argv, argvlen, 25);
    argv[26] = ngx_http_collab_worker->mcf->ack_replicas ? "1" : "";
    argvlen[26] = ngx_http_collab_worker->mcf->ack_replicas ? 1 : 0;

    s->inflight++;

    rc = ngx_http_collab_redis_command(ngx_http_collab_redis_for_doc(doc, 0),
                                       cmd, 27, argv, argvlen);

    if (rc == NGX_OK) {
        return NGX_OK;
    }

    s->inflight--;

    if (rc == NGX_BUSY) {
        m = ngx_http_collab_msg_busy("nack", doc, id,
                                     NGX_HTTP_COLLAB_BUSY_RETRY);

    } else {
        m = ngx_http_collab_msg_error("nack", "unavailable", doc, id,
                                      "the document store is unavailable");
    }

    ngx_http_collab_reply(s, slot, m);

    return NGX_OK;
}


/* ack=replicated: a WAIT on rc fell short less than a second ago */

static ngx_uint_t
ngx_http_collab_store_replicas_short(ngx_http_collab_redis_t *rc)
{
    if (rc->mcf->ack_replicas == 0 || rc->replicas_short == 0) {
        return 0;
    }

    if ((ngx_msec_int_t) (ngx_current_msec - rc->replicas_short) >= 0) {
        rc->replicas_short = 0;
        return 0;
    }

    return 1;
}


static ngx_int_t
ngx_http_collab_store_triple(redisReply *reply, ngx_int_t *status,
    int64_t *seq)
{
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3
        || reply->element[0]->type != REDIS_REPLY_INTEGER
        || reply->element[1]->type != REDIS_REPLY_INTEGER)
    {
        return NGX_ERROR;
    }

    *status = reply->element[0]->integer;
    *seq = reply->element[1]->integer;

    return NGX_OK;
}


/* -1 conflict (n: the head), -3 too large (n: its size), -4 invalid */

static ngx_http_collab_msg_t *
ngx_http_collab_store_refusal(ngx_http_collab_cmd_t *cmd, ngx_int_t status,
    int64_t n)
{
    u_char  text[64];

    switch (status) {

    case -3:
        return ngx_http_collab_msg_error("nack", "too_large", &cmd->doc,
                                         &cmd->id, "the document state "
                                         "would exceed %uz bytes",
                                         cmd->session->conf->state_max);

    case -4:
        return ngx_http_collab_msg_error("nack", "invalid", &cmd->doc,
                                         &cmd->id, "\"data\" is not a valid "
                                         "merge patch (objects nested more "
                                         "than 64 deep)");

    default:
        /* the head lets the client rebase without asking for it */
        *ngx_sprintf(text, "base is not the document head %L", n) = '\0';

        return ngx_http_collab_msg_build("nack", "id", 'S', &cmd->id,
                                         "doc", 'S', &cmd->doc,
                                         "code", 'C', "conflict",
                                         "message", 'C', (char *) text,
                                         "seq", 'I', n, NULL);
    }
}


static void
ngx_http_collab_store_append_reply(ngx_http_collab_cmd_t *cmd,
    redisReply *reply)
{
    int64_t                     seq;
    ngx_int_t                   status;
    ngx_http_collab_msg_t      *m;
    ngx_http_collab_session_t  *s;

    s = cmd->session;
    s->inflight--;

    if (reply == NULL) {
        m = ngx_http_collab_msg_error("nack", "unavailable", &cmd->doc,
                                      &cmd->id,
                                      "the document store is unavailable");

    } else if (reply->type == REDIS_REPLY_ERROR
               && ngx_strncmp(reply->str, "NOREPLICAS", 10) == 0)
    {
        /* min-replicas-to-write: not stored, a retry may be */
        m = ngx_http_collab_msg_error("nack", "unavailable", &cmd->doc,
                                      &cmd->id, "the document store has too "
                                      "few replicas now; retry later");

    } else if (reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, s->connection->log, 0,
                      "collab: storing a delta of \"%V\" failed: %s",
                      &cmd->doc, reply->str);

        m = ngx_http_collab_msg_error("nack", "internal", &cmd->doc,
                                      &cmd->id, "the delta was not stored");

    } else if (ngx_http_collab_store_triple(reply, &status, &seq) != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, s->connection->log, 0,
                      "collab: unexpected reply to collab_append");

        m = ngx_http_collab_msg_error("nack", "internal", &cmd->doc,
                                      &cmd->id, "the delta was not stored");

    } else if (status == -2) {
        m = ngx_http_collab_msg_error("nack", "forbidden", &cmd->doc,
                                      &cmd->id, "editing this document is "
                                      "not allowed");

    } else if (status < 0) {
        m = ngx_http_collab_store_refusal(cmd, status, seq);

    } else if (ngx_http_collab_worker->mcf->ack_replicas == 0) {
        m = ngx_http_collab_store_ack(cmd, seq);

    } else {
        /* acked once replicas have it: the command lives on as a WAIT */
        ngx_http_collab_store_replicate(cmd, seq);
        return;
    }

    ngx_http_collab_store_answered(cmd, m);
}


static ngx_http_collab_msg_t *
ngx_http_collab_store_ack(ngx_http_collab_cmd_t *cmd, int64_t seq)
{
    u_char                 *p;
    ngx_http_collab_msg_t  *m;

    m = ngx_http_collab_msg_alloc(cmd->doc.len + 2 * cmd->id.len
                                  + 6 * cmd->id.len + NGX_INT64_LEN
                                  + sizeof("{\"type\":\"ack\",\"id\":\"\","
                                           "\"doc\":\"\",\"seq\":}"));
    if (m == NULL) {
        return NULL;
    }

    p = ngx_cpymem(m->json, "{\"type\":\"ack\",\"id\":\"",
                   sizeof("{\"type\":\"ack\",\"id\":\"") - 1);
    p = (u_char *) ngx_escape_json(p, cmd->id.data, cmd->id.len);
    p = ngx_sprintf(p, "\",\"doc\":\"%V\",\"seq\":%L}", &cmd->doc, seq);
    m->len = p - m->json;
    ngx_str_set(&m->type, "ack");

    return m;
}


/*
 * ack=replicated.  WAIT counts the writes of the connection that sends it,
 * and Redis answers nothing else on that connection while it waits: so one
 * WAIT at a time per command connection (per primary in a cluster), for
 * every delta stored on it before it was sent.  Deltas stored meanwhile
 * wait for the next one.  A delta redirected (MOVED, ASK) waits on the
 * connection that finally stored it.  The queues are bounded by the deltas
 * in flight (collab_max_inflight per session).
 */

static void
ngx_http_collab_store_replicate(ngx_http_collab_cmd_t *cmd, int64_t seq)
{
    ngx_http_collab_redis_t  *rc;

    rc = cmd->rc;

    if (ngx_http_collab_store_replicas_short(rc)) {
        ngx_http_collab_store_answered(cmd,
            ngx_http_collab_msg_error("nack", "unavailable", &cmd->doc,
                                      &cmd->id, "the replicas do not "
                                      "confirm deltas now; retry later "
                                      "with the same id"));
        return;
    }

    cmd->seq = seq;
    cmd->session->inflight++;

    ngx_queue_insert_tail(&rc->acks, &cmd->redis_link);

    ngx_http_collab_store_wait_next(rc);
}


static void
ngx_http_collab_store_wait_next(ngx_http_collab_redis_t *rc)
{
    u_char                       nrep[NGX_INT_T_LEN], ms[NGX_INT_T_LEN];
    const char                  *argv[3];
    size_t                       argvlen[3];
    ngx_uint_t                   n;
    ngx_queue_t                 *q;
    ngx_http_collab_cmd_t       *cmd;
    ngx_http_collab_main_conf_t *mcf;

    mcf = rc->mcf;

    if (rc->wait || ngx_queue_empty(&rc->acks)) {
        return;
    }

    n = 0;

    for (q = ngx_queue_head(&rc->acks);
         q != ngx_queue_sentinel(&rc->acks);
         q = ngx_queue_next(q))
    {
        n++;
    }

    cmd = ngx_http_collab_cmd_alloc(NULL, 0);
    if (cmd == NULL) {
        ngx_http_collab_store_wait_answer(rc, 0, n);
        return;
    }

    cmd->by_name = 1;
    cmd->handler = ngx_http_collab_store_wait_reply;

    argv[0] = "WAIT";
    argvlen[0] = 4;
    argv[1] = (char *) nrep;
    argvlen[1] = ngx_sprintf(nrep, "%ui", mcf->ack_replicas) - nrep;
    argv[2] = (char *) ms;
    argvlen[2] = ngx_sprintf(ms, "%M", mcf->ack_timeout) - ms;

    if (ngx_http_collab_redis_command(rc, cmd, 3, argv, argvlen) != NGX_OK) {
        /* not sent, so the deltas were stored on a connection now gone */
        ngx_http_collab_store_wait_answer(rc, 0, n);
        return;
    }

    rc->wait = cmd;
    rc->wait_batch = n;
}


static void
ngx_http_collab_store_wait_reply(ngx_http_collab_cmd_t *cmd,
    redisReply *reply)
{
    ngx_uint_t                ok;
    ngx_http_collab_redis_t  *rc;

    rc = cmd->rc;
    rc->wait = NULL;

    ngx_http_collab_cmd_free(cmd);

    ok = reply && reply->type == REDIS_REPLY_INTEGER
         && reply->integer >= (long long) rc->mcf->ack_replicas;

    if (reply && reply->type == REDIS_REPLY_INTEGER && !ok) {
        /* appends are refused for a while rather than all waiting */
        rc->replicas_short = ngx_current_msec + 1000;

        ngx_log_error(NGX_LOG_WARN, rc->log, 0,
                      "collab: %ui deltas reached %L of %ui replicas of "
                      "\"%V\" within %M", rc->wait_batch,
                      (int64_t) reply->integer, rc->mcf->ack_replicas,
                      &rc->addr, rc->mcf->ack_timeout);
    }

    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER) {
        /* the link is lost: no WAIT can cover the rest any more */
        ngx_http_collab_store_wait_answer(rc, 0, (ngx_uint_t) -1);
        return;
    }

    ngx_http_collab_store_wait_answer(rc, ok, rc->wait_batch);

    ngx_http_collab_store_wait_next(rc);
}


/* acks (or nacks) the first n deltas of the queue */

static void
ngx_http_collab_store_wait_answer(ngx_http_collab_redis_t *rc, ngx_uint_t ok,
    ngx_uint_t n)
{
    ngx_queue_t            *q;
    ngx_http_collab_msg_t  *m;
    ngx_http_collab_cmd_t  *cmd;

    while (n-- && !ngx_queue_empty(&rc->acks)) {
        q = ngx_queue_head(&rc->acks);
        ngx_queue_remove(q);
        cmd = ngx_queue_data(q, ngx_http_collab_cmd_t, redis_link);

        if (cmd->session == NULL) {
            /* the session is gone */
            ngx_http_collab_cmd_free(cmd);
            continue;
        }

        cmd->session->inflight--;

        if (ok) {
            m = ngx_http_collab_store_ack(cmd, cmd->seq);

        } else {
            m = ngx_http_collab_msg_error("nack", "unavailable", &cmd->doc,
                                          &cmd->id, "the delta was not "
                                          "confirmed by enough replicas; "
                                          "retry with the same id");
        }

        ngx_http_collab_store_answered(cmd, m);
    }
}


/* the last use of the session: a reply may be what ends it */

static void
ngx_http_collab_store_answered(ngx_http_collab_cmd_t *cmd,
    ngx_http_collab_msg_t *m)
{
    ngx_uint_t                  slot;
    ngx_http_collab_session_t  *s;

    s = cmd->session;
    slot = cmd->slot;
    ngx_http_collab_cmd_free(cmd);

    ngx_http_collab_store_woke(s);
    ngx_http_collab_reply(s, slot, m);
}


static void
ngx_http_collab_store_woke(ngx_http_collab_session_t *s)
{
    if (s->read_blocked && s->inflight < s->conf->max_inflight) {
        s->read_blocked = 0;
        ngx_post_event(s->connection->read, &ngx_posted_events);
    }
}


ngx_int_t
ngx_http_collab_store_state(ngx_http_collab_session_t *s, ngx_str_t *doc,
    uint64_t seq, ngx_str_t *data, ngx_uint_t slot)
{
    u_char                  kstate[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  kacl[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  kaudit[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  epoch[NGX_HTTP_COLLAB_EPOCH_LEN];
    u_char                  sseq[NGX_INT64_LEN];
    u_char                  role[2];
    u_char                  expire[NGX_INT64_LEN];
    const char             *argv[15];
    size_t                  argvlen[15];
    ngx_int_t               rc;
    ngx_http_collab_cmd_t  *cmd;
    ngx_http_collab_msg_t  *m;

    cmd = ngx_http_collab_cmd_alloc(s, doc->len);
    if (cmd == NULL) {
        return NGX_ERROR;
    }

    cmd->handler = ngx_http_collab_store_state_reply;
    cmd->slot = slot;
    cmd->doc.data = cmd->data;
    cmd->doc.len = doc->len;
    ngx_memcpy(cmd->doc.data, doc->data, doc->len);

    ngx_http_collab_store_epoch(epoch);

    argv[0] = "FCALL";
    argvlen[0] = 5;
    argv[1] = "collab_state";
    argvlen[1] = 12;
    argv[2] = "3";
    argvlen[2] = 1;
    argv[3] = (char *) kstate;
    argvlen[3] = ngx_http_collab_key(kstate, doc, ":state");
    argv[4] = (char *) kacl;
    argvlen[4] = ngx_http_collab_key(kacl, doc, ":acl");
    argv[5] = (char *) kaudit;
    argvlen[5] = ngx_http_collab_key(kaudit, doc, ":audit");
    argv[6] = (char *) epoch;
    argvlen[6] = NGX_HTTP_COLLAB_EPOCH_LEN;
    argv[7] = (char *) sseq;
    argvlen[7] = ngx_sprintf(sseq, "%uL", seq) - sseq;
    argv[8] = (char *) data->data;
    argvlen[8] = data->len;
    argv[9] = (char *) s->user.data;
    argvlen[9] = s->user.len;
    ngx_http_collab_store_role_args(s, doc, &argv[10], &argvlen[10], role);
    argv[13] = (char *) expire;
    argvlen[13] = ngx_sprintf(expire, "%M", s->conf->doc_expire) - expire;
    ngx_http_collab_store_fence_arg(cmd, doc, argv, argvlen, 14);

    rc = ngx_http_collab_redis_command(ngx_http_collab_redis_for_doc(doc, 0),
                                       cmd, 15, argv, argvlen);

    if (rc == NGX_OK) {
        return NGX_OK;
    }

    if (rc == NGX_BUSY) {
        m = ngx_http_collab_msg_busy("error", doc, NULL,
                                     NGX_HTTP_COLLAB_BUSY_RETRY);

    } else {
        m = ngx_http_collab_msg_error("error", "unavailable", doc, NULL,
                                      "the document store is unavailable");
    }

    ngx_http_collab_reply(s, slot, m);

    return NGX_OK;
}


static void
ngx_http_collab_store_state_reply(ngx_http_collab_cmd_t *cmd,
    redisReply *reply)
{
    int64_t                     seq;
    ngx_int_t                   status;
    ngx_uint_t                  slot;
    ngx_http_collab_msg_t      *m;
    ngx_http_collab_session_t  *s;

    s = cmd->session;

    if (reply == NULL) {
        m = ngx_http_collab_msg_error("error", "unavailable", &cmd->doc,
                                      NULL,
                                      "the document store is unavailable");

    } else if (reply->type == REDIS_REPLY_ERROR
               || ngx_http_collab_store_triple(reply, &status, &seq)
                  != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, s->connection->log, 0,
                      "collab: storing the state of \"%V\" failed: %s",
                      &cmd->doc, reply->type == REDIS_REPLY_ERROR
                                 ? reply->str : "unexpected reply");

        m = ngx_http_collab_msg_error("error", "internal", &cmd->doc, NULL,
                                      "the state was not stored");

    } else if (status == -2) {
        m = ngx_http_collab_msg_error("error", "forbidden", &cmd->doc, NULL,
                                      "storing a state of this document is "
                                      "not allowed");

    } else if (status < 0) {
        m = ngx_http_collab_msg_error("error", "invalid", &cmd->doc, NULL,
                                      "seq is beyond the document head %L",
                                      seq);

    } else if (status == 0) {
        m = ngx_http_collab_msg_error("error", "conflict", &cmd->doc, NULL,
                                      "a newer state is stored (seq %L)",
                                      seq);

    } else {
        m = ngx_http_collab_msg_build("ok", "doc", 'S', &cmd->doc,
                                      "seq", 'I', seq, NULL);
    }

    slot = cmd->slot;
    ngx_http_collab_cmd_free(cmd);

    ngx_http_collab_reply(s, slot, m);
}


ngx_int_t
ngx_http_collab_store_read(ngx_http_collab_sub_t *sub)
{
    size_t                      room, used;
    int64_t                     since;
    ngx_int_t                   rc;
    ngx_str_t                   epoch;
    ngx_http_collab_cmd_t      *cmd;
    ngx_http_collab_session_t  *s;

    s = sub->session;

    cmd = ngx_http_collab_cmd_alloc(s, 0);
    if (cmd == NULL) {
        return NGX_ERROR;
    }

    cmd->handler = ngx_http_collab_store_read_reply;
    cmd->sub = sub;
    sub->read = cmd;
    sub->stalled = 0;
    sub->acl_gen = sub->doc->acl_gen;
    sub->epoch_gen = sub->doc->epoch_gen;

    if (sub->state == NGX_HTTP_COLLAB_SUB_JOINING) {
        since = sub->since;
        epoch.data = sub->epoch;
        epoch.len = sub->has_epoch ? NGX_HTTP_COLLAB_EPOCH_LEN : 0;

    } else {
        since = (int64_t) sub->pos;
        ngx_str_set(&epoch, "");
    }

    /*
     * Ask only for what fits the free part of the send queue, less what the
     * session's other reads were promised (at least one entry comes back):
     * the reply is what Redis buffers for this worker.
     */

    used = s->out_bytes + s->read_reserved;
    room = (used < s->conf->send_queue) ? s->conf->send_queue - used : 1;

    cmd->budget = room;
    s->read_reserved += room;
    sub->budget = room;

    rc = ngx_http_collab_store_read_send(s, cmd, &sub->doc->node.str, since,
                                         NGX_HTTP_COLLAB_READ_BATCH, &epoch,
                                         room, sub->primary);

    if (rc != NGX_OK) {
        /* retried when Redis is back, where it was meant to go */
        sub->stalled = 1;
        return NGX_DECLINED;
    }

    /* one read to the primary at a time: the next may use the replica */
    sub->primary = 0;

    return NGX_OK;
}


/*
 * An HTTP read: the snapshot alone (since -1, no entries) or a page of the
 * log; NGX_OK: the reply will come, else Redis cannot take the command.
 */

ngx_int_t
ngx_http_collab_store_fetch(ngx_http_collab_session_t *s,
    ngx_http_collab_get_t *g)
{
    return ngx_http_collab_store_fetch_on(s, g, 0);
}


static ngx_int_t
ngx_http_collab_store_fetch_on(ngx_http_collab_session_t *s,
    ngx_http_collab_get_t *g, ngx_uint_t primary)
{
    ngx_http_collab_cmd_t  *cmd;

    cmd = ngx_http_collab_cmd_alloc(s, 0);
    if (cmd == NULL) {
        return NGX_ERROR;
    }

    cmd->handler = ngx_http_collab_store_fetch_reply;

    return ngx_http_collab_store_read_send(s, cmd, &g->doc, g->since,
                                           g->since < 0 ? 0 : g->limit,
                                           &g->epoch,
                                           NGX_HTTP_COLLAB_GET_BUDGET,
                                           primary);
}


/*
 * collab_read, or collab_read_ro on the replica while it is usable and
 * "primary" is not asked for; the command is freed when it cannot be sent
 */

static ngx_int_t
ngx_http_collab_store_read_send(ngx_http_collab_session_t *s,
    ngx_http_collab_cmd_t *cmd, ngx_str_t *doc, int64_t since,
    ngx_uint_t count, ngx_str_t *client_epoch, size_t budget,
    ngx_uint_t primary)
{
    u_char                    kstate[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                    klog[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                    kacl[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                    kaudit[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                    epoch[NGX_HTTP_COLLAB_EPOCH_LEN];
    u_char                    ssince[NGX_INT64_LEN + 1];
    u_char                    scount[NGX_INT_T_LEN];
    u_char                    sbudget[NGX_SIZE_T_LEN];
    u_char                    expire[NGX_INT64_LEN];
    u_char                    role[2];
    size_t                    argvlen[18];
    const char               *argv[18];
    ngx_http_collab_redis_t  *rc;

    ngx_http_collab_store_epoch(epoch);

    argv[0] = "FCALL";
    argvlen[0] = 5;
    argv[1] = "collab_read";
    argvlen[1] = 11;
    argv[2] = "4";
    argvlen[2] = 1;
    argv[3] = (char *) kstate;
    argvlen[3] = ngx_http_collab_key(kstate, doc, ":state");
    argv[4] = (char *) klog;
    argvlen[4] = ngx_http_collab_key(klog, doc, ":log");
    argv[5] = (char *) kacl;
    argvlen[5] = ngx_http_collab_key(kacl, doc, ":acl");
    argv[6] = (char *) kaudit;
    argvlen[6] = ngx_http_collab_key(kaudit, doc, ":audit");
    argv[7] = (char *) epoch;
    argvlen[7] = NGX_HTTP_COLLAB_EPOCH_LEN;
    argv[8] = (char *) ssince;
    argvlen[8] = ngx_sprintf(ssince, "%L", since) - ssince;
    argv[9] = (char *) scount;
    argvlen[9] = ngx_sprintf(scount, "%ui", count) - scount;
    argv[10] = client_epoch->len ? (char *) client_epoch->data : "";
    argvlen[10] = client_epoch->len;
    argv[11] = (char *) s->user.data;
    argvlen[11] = s->user.len;
    ngx_http_collab_store_role_args(s, doc, &argv[12], &argvlen[12], role);
    argv[15] = (char *) sbudget;
    argvlen[15] = ngx_sprintf(sbudget, "%uz", budget) - sbudget;

    argv[16] = (char *) expire;
    argvlen[16] = ngx_sprintf(expire, "%M", s->conf->doc_expire) - expire;
    ngx_http_collab_store_fence_arg(cmd, doc, argv, argvlen, 17);

    rc = primary ? NULL : ngx_http_collab_replica_reads();

    if (rc) {
        argv[0] = "FCALL_RO";
        argvlen[0] = 8;
        argv[1] = "collab_read_ro";
        argvlen[1] = 14;

    } else {
        rc = ngx_http_collab_redis_for_doc(doc, 0);
    }

    return ngx_http_collab_redis_command(rc, cmd, 18, argv, argvlen);
}


/*
 * A replica's answer that the primary gives instead: {-3} (the read would
 * write or decide), an error (NOSCRIPT, MASTERDOWN, ...), a lost link.
 */

static ngx_uint_t
ngx_http_collab_store_ask_primary(redisReply *reply)
{
    return reply == NULL || reply->type == REDIS_REPLY_ERROR
           || (reply->type == REDIS_REPLY_ARRAY && reply->elements == 1
               && reply->element[0]->type == REDIS_REPLY_INTEGER
               && reply->element[0]->integer == -3);
}


static void
ngx_http_collab_store_read_reply(ngx_http_collab_cmd_t *cmd,
    redisReply *reply)
{
    ngx_uint_t               replica;
    ngx_http_collab_sub_t   *sub;
    ngx_http_collab_read_t   rd;

    sub = cmd->sub;
    replica = cmd->rc->replica;

    ngx_http_collab_cmd_free(cmd);

    if (sub == NULL) {
        /* unsubscribed while reading */
        return;
    }

    if (replica && ngx_http_collab_store_ask_primary(reply)) {
        /*
         * The same read, from the newest point: the client cannot tell.
         * Through the gate of every read: not while the channel moves.
         */

        sub->again = 0;
        sub->primary = 1;

        ngx_http_collab_doc_sub_read(sub);

        return;
    }

    ngx_http_collab_store_read_decode(reply, &rd);
    rd.replica = replica;

    ngx_http_collab_doc_read_done(sub, &rd);
}


static void
ngx_http_collab_store_fetch_reply(ngx_http_collab_cmd_t *cmd,
    redisReply *reply)
{
    ngx_uint_t                  replica;
    ngx_http_collab_read_t      rd;
    ngx_http_collab_session_t  *s;

    s = cmd->session;
    replica = cmd->rc->replica;

    ngx_http_collab_cmd_free(cmd);

    if (replica && ngx_http_collab_store_ask_primary(reply)
        && ngx_http_collab_store_fetch_on(s, s->get, 1) == NGX_OK)
    {
        /* answered by the primary, in a later event loop turn */
        return;
    }

    ngx_http_collab_store_read_decode(reply, &rd);

    if (replica && ngx_http_collab_store_ask_primary(reply)) {
        /* the primary could not take the read: "unavailable" */
        rd.status = NGX_AGAIN;
    }

    ngx_http_collab_get_done(s, &rd);
}


/*
 * The reply of collab_read: {-2} without a role, else epoch, head, mode,
 * snapshot seq, snapshot data, role, ACL, then (seq, id, user, ts, data)
 * per entry.
 */

static void
ngx_http_collab_store_read_decode(redisReply *reply,
    ngx_http_collab_read_t *rd)
{
    redisReply  **e;

    ngx_memzero(rd, sizeof(ngx_http_collab_read_t));

    if (reply == NULL) {
        rd->status = NGX_AGAIN;
        return;
    }

    e = reply->element;

    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 1
        && e[0]->type == REDIS_REPLY_INTEGER && e[0]->integer == -2)
    {
        rd->status = NGX_DECLINED;
        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 7
        || (reply->elements - 7) % 5 != 0
        || e[0]->type != REDIS_REPLY_STRING
        || e[1]->type != REDIS_REPLY_INTEGER
        || e[2]->type != REDIS_REPLY_INTEGER
        || e[3]->type != REDIS_REPLY_INTEGER
        || e[5]->type != REDIS_REPLY_INTEGER)
    {
        rd->status = NGX_ERROR;
        rd->error = reply->type == REDIS_REPLY_ERROR
                    ? reply->str : "unexpected reply";
        return;
    }

    rd->status = NGX_OK;
    rd->epoch.data = (u_char *) e[0]->str;
    rd->epoch.len = e[0]->len;
    rd->head = e[1]->integer;
    rd->from_snap = (e[2]->integer == 1);
    rd->snap_seq = e[3]->integer;

    if (e[4]->type == REDIS_REPLY_STRING) {
        rd->snap.data = (u_char *) e[4]->str;
        rd->snap.len = e[4]->len;
    }

    rd->role = (ngx_uint_t) e[5]->integer;

    if (e[6]->type == REDIS_REPLY_STRING) {
        rd->acl.data = (u_char *) e[6]->str;
        rd->acl.len = e[6]->len;
    }

    rd->nentries = (reply->elements - 7) / 5;
    rd->entries = &e[7];
}


/* entries are decoded one at a time, as they are sent: nothing is copied */

void
ngx_http_collab_store_read_entry(ngx_http_collab_read_t *rd, ngx_uint_t i,
    ngx_http_collab_entry_t *e)
{
    ngx_int_t     v;
    redisReply  **f;

    f = &rd->entries[i * 5];

    e->seq = -1;

    if (f[0]->type == REDIS_REPLY_STRING) {
        v = ngx_atoi((u_char *) f[0]->str, f[0]->len);
        if (v != NGX_ERROR) {
            e->seq = v;
        }
    }

    e->id.data = (u_char *) f[1]->str;
    e->id.len = f[1]->len;
    e->user.data = (u_char *) f[2]->str;
    e->user.len = f[2]->len;
    e->ts.data = (u_char *) f[3]->str;
    e->ts.len = f[3]->len;
    e->data.data = (u_char *) f[4]->str;
    e->data.len = f[4]->len;

    /* as collab_read counts its byte budget */
    e->cost = e->data.len + e->id.len + e->user.len + 64;
}


/*
 * A message on a document's channel: the deltas and resets that the
 * functions publish, the ACL notices, the ephemera of doc_publish.
 * Deltas start with a fixed prefix and are found without a JSON parser.
 * NGX_ERROR: not JSON.
 */

ngx_int_t
ngx_http_collab_store_event(ngx_str_t *doc, u_char *p, size_t len,
    ngx_http_collab_event_t *ev)
{
    json_t      *obj, *v;
    const char  *type, *epoch;

    ngx_memzero(ev, sizeof(ngx_http_collab_event_t));

    if (ngx_http_collab_store_event_delta(p, len, doc, &ev->seq) == NGX_OK) {
        ev->type = NGX_HTTP_COLLAB_EVENT_DELTA;
        return NGX_OK;
    }

    /* relayed ephemera keep integers of any size (see proto_handle) */
    obj = json_loadb((char *) p, len, JSON_DECODE_INT_AS_REAL, NULL);
    if (obj == NULL) {
        return NGX_ERROR;
    }

    ev->obj = obj;

    type = json_string_value(json_object_get(obj, "type"));

    if (type == NULL) {
        return NGX_OK;
    }

    if (ngx_strcmp(type, "acl") == 0) {
        ev->type = NGX_HTTP_COLLAB_EVENT_ACL;

    } else if (ngx_strcmp(type, "reset") == 0) {
        ev->type = NGX_HTTP_COLLAB_EVENT_RESET;

        epoch = json_string_value(json_object_get(obj, "epoch"));

        if (epoch && ngx_strlen(epoch) == NGX_HTTP_COLLAB_EPOCH_LEN) {
            ev->epoch = (u_char *) epoch;
        }

    } else if (ngx_strcmp(type, "intent") == 0
               || ngx_strcmp(type, "presence") == 0)
    {
        ev->type = (type[0] == 'i') ? NGX_HTTP_COLLAB_EVENT_INTENT
                                    : NGX_HTTP_COLLAB_EVENT_PRESENCE;

        ev->session.data = (u_char *)
                       json_string_value(json_object_get(obj, "session"));
        ev->session.len = ev->session.data
                          ? ngx_strlen(ev->session.data) : 0;

        v = json_object_get(obj, "pseq");

        if (json_is_number(v) && json_number_value(v) > 0) {
            ev->pseq = (uint64_t) json_number_value(v);
        }

        /* only Redis publishes a leave: it is never dropped */
        ev->left = ev->type == NGX_HTTP_COLLAB_EVENT_PRESENCE
                   && json_is_true(json_object_get(obj, "left"));
    }

    return NGX_OK;
}


/*
 * The deltas collab_append publishes start with a fixed prefix, so fan-out
 * finds the seq without a JSON parser.
 */

static ngx_int_t
ngx_http_collab_store_event_delta(u_char *p, size_t len, ngx_str_t *doc,
    uint64_t *seq)
{
    u_char    *last;
    uint64_t   n;

    static const char  prefix[] = "{\"type\":\"delta\",\"doc\":\"";

    last = p + len;

    if (len < sizeof(prefix) - 1 + doc->len + sizeof("\",\"seq\":1") - 1
        || ngx_memcmp(p, prefix, sizeof(prefix) - 1) != 0)
    {
        return NGX_DECLINED;
    }

    p += sizeof(prefix) - 1;

    if (ngx_memcmp(p, doc->data, doc->len) != 0) {
        return NGX_DECLINED;
    }

    p += doc->len;

    if (ngx_memcmp(p, "\",\"seq\":", sizeof("\",\"seq\":") - 1) != 0) {
        return NGX_DECLINED;
    }

    p += sizeof("\",\"seq\":") - 1;
    n = 0;

    while (p < last && *p >= '0' && *p <= '9') {
        if (n > ((uint64_t) 1 << 53) / 10) {
            return NGX_DECLINED;
        }

        n = n * 10 + (*p++ - '0');
    }

    if (p == last || *p != ',' || n == 0) {
        return NGX_DECLINED;
    }

    *seq = n;

    return NGX_OK;
}


void
ngx_http_collab_store_event_free(ngx_http_collab_event_t *ev)
{
    if (ev->obj) {
        json_decref(ev->obj);
    }
}


/* the ACL for a worker that was told it changed; retried by the caller */

ngx_int_t
ngx_http_collab_store_acl(ngx_http_collab_doc_t *doc)
{
    u_char                  kacl[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  kaudit[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  kstate[NGX_HTTP_COLLAB_KEY_MAX];
    const char             *argv[6];
    size_t                  argvlen[6];
    ngx_http_collab_cmd_t  *cmd;

    cmd = ngx_http_collab_cmd_alloc(NULL, 0);
    if (cmd == NULL) {
        return NGX_ERROR;
    }

    cmd->doc_owner = doc;
    cmd->handler = ngx_http_collab_store_acl_reply;

    argv[0] = "FCALL";
    argvlen[0] = 5;
    argv[1] = "collab_acl";
    argvlen[1] = 10;
    argv[2] = "3";
    argvlen[2] = 1;
    argv[3] = (char *) kacl;
    argvlen[3] = ngx_http_collab_key(kacl, &doc->node.str, ":acl");
    argv[4] = (char *) kaudit;
    argvlen[4] = ngx_http_collab_key(kaudit, &doc->node.str, ":audit");
    argv[5] = (char *) kstate;
    argvlen[5] = ngx_http_collab_key(kstate, &doc->node.str, ":state");

    if (ngx_http_collab_redis_command(
                               ngx_http_collab_redis_for_doc(&doc->node.str, 0),
                               cmd, 6, argv, argvlen)
        != NGX_OK)
    {
        /* freed already: connection down or pipeline full */
        return NGX_ERROR;
    }

    doc->acl_cmd = cmd;

    return NGX_OK;
}


/* the reply of collab_acl: the raw ACL, or nil without one */

static void
ngx_http_collab_store_acl_reply(ngx_http_collab_cmd_t *cmd,
    redisReply *reply)
{
    ngx_http_collab_doc_t       *doc;
    ngx_http_collab_acl_load_t   ld;

    doc = cmd->doc_owner;
    doc->acl_cmd = NULL;
    cmd->doc_owner = NULL;

    ngx_http_collab_cmd_free(cmd);

    ngx_memzero(&ld, sizeof(ngx_http_collab_acl_load_t));

    if (reply == NULL) {
        ld.status = NGX_AGAIN;

    } else if (reply->type == REDIS_REPLY_ERROR) {
        ld.status = NGX_ERROR;
        ld.error = reply->str;

    } else if (reply->type == REDIS_REPLY_STRING) {
        ld.raw.data = (u_char *) reply->str;
        ld.raw.len = reply->len;
    }

    ngx_http_collab_acl_loaded(doc, &ld);
}


/* keys: audit; args: user action.  The reply does not matter. */

void
ngx_http_collab_store_deny(ngx_http_collab_session_t *s, ngx_str_t *doc,
    const char *action)
{
    u_char                  kaudit[NGX_HTTP_COLLAB_KEY_MAX];
    const char             *argv[6];
    size_t                  argvlen[6];
    ngx_http_collab_cmd_t  *cmd;

    cmd = ngx_http_collab_cmd_alloc(NULL, 0);
    if (cmd == NULL) {
        return;
    }

    cmd->handler = ngx_http_collab_cmd_discard;

    argv[0] = "FCALL";
    argvlen[0] = 5;
    argv[1] = "collab_deny";
    argvlen[1] = 11;
    argv[2] = "1";
    argvlen[2] = 1;
    argv[3] = (char *) kaudit;
    argvlen[3] = ngx_http_collab_key(kaudit, doc, ":audit");
    argv[4] = (char *) s->user.data;
    argvlen[4] = s->user.len;
    argv[5] = action;
    argvlen[5] = ngx_strlen(action);

    (void) ngx_http_collab_redis_command(ngx_http_collab_redis_for_doc(doc, 0),
                                         cmd, 6, argv, argvlen);
}


/*
 * collab_acl_get (body NULL) or collab_acl_put for the admin endpoint:
 * admin, the holder of the admin key, needs no role.  version NULL: put
 * whatever the version is.  NGX_DECLINED: the store is unavailable.
 */

ngx_int_t
ngx_http_collab_store_acl_admin(ngx_http_collab_session_t *s,
    ngx_str_t *doc, ngx_uint_t admin, int64_t *version, ngx_str_t *body)
{
    u_char                  kacl[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  kaudit[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  kstate[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  chan[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  sversion[NGX_INT64_LEN];
    u_char                  role[2];
    const char             *argv[14], *rargv[3];
    size_t                  argvlen[14], rargvlen[3];
    ngx_http_collab_cmd_t  *cmd;

    argv[0] = "FCALL";
    argvlen[0] = 5;
    argv[1] = body ? "collab_acl_put" : "collab_acl_get";
    argvlen[1] = 14;
    argv[2] = "4";
    argvlen[2] = 1;
    argv[3] = (char *) kacl;
    argvlen[3] = ngx_http_collab_key(kacl, doc, ":acl");
    argv[4] = (char *) kaudit;
    argvlen[4] = ngx_http_collab_key(kaudit, doc, ":audit");
    argv[5] = (char *) kstate;
    argvlen[5] = ngx_http_collab_key(kstate, doc, ":state");
    argv[6] = (char *) chan;
    argvlen[6] = ngx_http_collab_key(chan, doc, "");

    /* args: admin user groups grant version default body */

    ngx_http_collab_store_role_args(s, doc, rargv, rargvlen, role);

    argv[7] = admin ? "1" : "0";
    argvlen[7] = 1;
    argv[8] = admin ? "admin" : (char *) s->user.data;
    argvlen[8] = admin ? 5 : s->user.len;
    argv[9] = rargv[0];
    argvlen[9] = rargvlen[0];
    argv[10] = rargv[1];
    argvlen[10] = rargvlen[1];
    argv[11] = (char *) sversion;
    argvlen[11] = version ? (size_t) (ngx_sprintf(sversion, "%L", *version)
                                      - sversion)
                          : 0;
    argv[12] = rargv[2];
    argvlen[12] = rargvlen[2];
    argv[13] = body ? (char *) body->data : "";
    argvlen[13] = body ? body->len : 0;

    cmd = ngx_http_collab_cmd_alloc(s, 0);
    if (cmd == NULL) {
        return NGX_ERROR;
    }

    cmd->handler = ngx_http_collab_store_acl_admin_reply;

    if (ngx_http_collab_redis_command(ngx_http_collab_redis_for_doc(doc, 0),
                                      cmd, 14, argv, argvlen)
        != NGX_OK)
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static void
ngx_http_collab_store_acl_admin_reply(ngx_http_collab_cmd_t *cmd,
    redisReply *reply)
{
    ngx_http_collab_session_t    *s;
    ngx_http_collab_acl_admin_t   res;

    s = cmd->session;

    ngx_http_collab_cmd_free(cmd);

    ngx_http_collab_store_acl_admin_decode(reply, &res);

    ngx_http_collab_admin_done(s, &res);
}


/* {status, version, raw}: 1 ok, -1 version conflict, -2 forbidden */

static void
ngx_http_collab_store_acl_admin_decode(redisReply *reply,
    ngx_http_collab_acl_admin_t *res)
{
    redisReply  **e;

    ngx_memzero(res, sizeof(ngx_http_collab_acl_admin_t));

    if (reply == NULL) {
        res->status = NGX_AGAIN;
        return;
    }

    e = reply->element;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1
        || e[0]->type != REDIS_REPLY_INTEGER)
    {
        res->status = NGX_ERROR;
        res->error = reply->type == REDIS_REPLY_ERROR
                     ? reply->str : "unexpected reply";
        return;
    }

    switch (e[0]->integer) {

    case 1:
        res->status = NGX_OK;

        if (reply->elements == 3 && e[2]->type == REDIS_REPLY_STRING) {
            res->acl.data = (u_char *) e[2]->str;
            res->acl.len = e[2]->len;
        }

        break;

    case -1:
        res->status = NGX_DECLINED;
        res->conflict = 1;
        break;

    default:
        res->status = NGX_DECLINED;
        break;
    }
}


/* the presence commands share their keys and first arguments */

static void
ngx_http_collab_store_presence_args(ngx_str_t *doc, const char *fn,
    const char **argv, size_t *argvlen, u_char kpres[NGX_HTTP_COLLAB_KEY_MAX],
    u_char kexp[NGX_HTTP_COLLAB_KEY_MAX], u_char chan[NGX_HTTP_COLLAB_KEY_MAX])
{
    argv[0] = "FCALL";
    argvlen[0] = 5;
    argv[1] = fn;
    argvlen[1] = ngx_strlen(fn);
    argv[2] = "2";
    argvlen[2] = 1;
    argv[3] = (char *) kpres;
    argvlen[3] = ngx_http_collab_key(kpres, doc, ":presence");
    argv[4] = (char *) kexp;
    argvlen[4] = ngx_http_collab_key(kexp, doc, ":presence:exp");
    argv[5] = (char *) chan;
    argvlen[5] = ngx_http_collab_key(chan, doc, "");
    argv[6] = (char *) doc->data;
    argvlen[6] = doc->len;
}


/* keys: presence, presence:exp; args: channel doc session entry ttl */

ngx_int_t
ngx_http_collab_store_presence(ngx_http_collab_session_t *s, u_char *sid,
    ngx_str_t *doc, ngx_str_t *entry)
{
    u_char                  kpres[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  kexp[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  chan[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  ttl[NGX_INT_T_LEN];
    const char             *argv[10];
    size_t                  argvlen[10];
    ngx_http_collab_cmd_t  *cmd;

    cmd = ngx_http_collab_cmd_alloc(s, 0);
    if (cmd == NULL) {
        return NGX_ERROR;
    }

    cmd->handler = ngx_http_collab_cmd_discard;

    ngx_http_collab_store_presence_args(doc, "collab_presence", argv,
                                        argvlen, kpres, kexp, chan);
    argv[7] = (char *) sid;
    argvlen[7] = 16;
    argv[8] = (char *) entry->data;
    argvlen[8] = entry->len;
    argv[9] = (char *) ttl;
    argvlen[9] = ngx_sprintf(ttl, "%M",
                             ngx_http_collab_worker->mcf->presence_ttl)
                 - ttl;

    return ngx_http_collab_redis_command(ngx_http_collab_redis_for_doc(doc, 0),
                                         cmd, 10, argv, argvlen);
}


/*
 * Not a session's: the leave must reach Redis after the session is gone.
 * Commands go out in order, so it follows the session's last set.
 */

ngx_int_t
ngx_http_collab_store_presence_leave(ngx_str_t *doc, u_char *sid,
    const char *reason)
{
    u_char                  kpres[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  kexp[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  chan[NGX_HTTP_COLLAB_KEY_MAX];
    const char             *argv[9];
    size_t                  argvlen[9];
    ngx_http_collab_cmd_t  *cmd;

    cmd = ngx_http_collab_cmd_alloc(NULL, 0);
    if (cmd == NULL) {
        return NGX_ERROR;
    }

    cmd->handler = ngx_http_collab_cmd_discard;

    ngx_http_collab_store_presence_args(doc, "collab_presence_leave", argv,
                                        argvlen, kpres, kexp, chan);
    argv[7] = (char *) sid;
    argvlen[7] = 16;
    argv[8] = reason;
    argvlen[8] = ngx_strlen(reason);

    return ngx_http_collab_redis_command(ngx_http_collab_redis_for_doc(doc, 0),
                                         cmd, 9, argv, argvlen);
}


/* args: channel doc ttl session...; the reply names the entries lost */

ngx_int_t
ngx_http_collab_store_presence_refresh(ngx_str_t *doc, ngx_str_t *sids,
    ngx_uint_t n)
{
    u_char                  kpres[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  kexp[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  chan[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  ttl[NGX_INT_T_LEN];
    size_t                 *argvlen;
    ngx_int_t               rc;
    ngx_uint_t              i;
    const char            **argv;
    ngx_http_collab_cmd_t  *cmd;

    argv = ngx_alloc((8 + n) * (sizeof(char *) + sizeof(size_t)),
                     ngx_cycle->log);
    if (argv == NULL) {
        return NGX_ERROR;
    }

    argvlen = (size_t *) (argv + 8 + n);

    cmd = ngx_http_collab_cmd_alloc(NULL, doc->len);
    if (cmd == NULL) {
        ngx_free(argv);
        return NGX_ERROR;
    }

    cmd->handler = ngx_http_collab_store_presence_refresh_reply;
    cmd->by_name = 1;
    cmd->doc.data = cmd->data;
    cmd->doc.len = doc->len;
    ngx_memcpy(cmd->doc.data, doc->data, doc->len);

    ngx_http_collab_store_presence_args(doc, "collab_presence_refresh", argv,
                                        argvlen, kpres, kexp, chan);
    argv[7] = (char *) ttl;
    argvlen[7] = ngx_sprintf(ttl, "%M",
                             ngx_http_collab_worker->mcf->presence_ttl)
                 - ttl;

    for (i = 0; i < n; i++) {
        argv[8 + i] = (char *) sids[i].data;
        argvlen[8 + i] = sids[i].len;
    }

    rc = ngx_http_collab_redis_command(ngx_http_collab_redis_for_doc(doc, 0),
                                       cmd, 8 + n, argv, argvlen);

    ngx_free(argv);

    return rc;
}


/*
 * The sessions whose entries Redis no longer has: the document is looked
 * up by name, as it may have gone meanwhile.
 */

static void
ngx_http_collab_store_presence_refresh_reply(ngx_http_collab_cmd_t *cmd,
    redisReply *reply)
{
    u_char      **sids;
    ngx_uint_t    i, n;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements == 0)
    {
        ngx_http_collab_cmd_free(cmd);
        return;
    }

    sids = ngx_alloc(reply->elements * sizeof(u_char *), ngx_cycle->log);
    if (sids == NULL) {
        ngx_http_collab_cmd_free(cmd);
        return;
    }

    n = 0;

    for (i = 0; i < reply->elements; i++) {
        if (reply->element[i]->type == REDIS_REPLY_STRING
            && reply->element[i]->len == 16)
        {
            sids[n++] = (u_char *) reply->element[i]->str;
        }
    }

    ngx_http_collab_presence_lost(&cmd->doc, sids, n);

    ngx_free(sids);
    ngx_http_collab_cmd_free(cmd);
}


/* args: channel doc max; the reply goes to the session's membership */

ngx_int_t
ngx_http_collab_store_presence_list(ngx_http_collab_session_t *s,
    ngx_str_t *doc, ngx_uint_t max, ngx_uint_t gen)
{
    u_char                  kpres[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  kexp[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  chan[NGX_HTTP_COLLAB_KEY_MAX];
    u_char                  smax[NGX_INT_T_LEN];
    const char             *argv[8];
    size_t                  argvlen[8];
    ngx_http_collab_cmd_t  *cmd;

    cmd = ngx_http_collab_cmd_alloc(s, doc->len);
    if (cmd == NULL) {
        return NGX_ERROR;
    }

    cmd->handler = ngx_http_collab_store_presence_list_reply;
    cmd->slot = gen;
    cmd->doc.data = cmd->data;
    cmd->doc.len = doc->len;
    ngx_memcpy(cmd->doc.data, doc->data, doc->len);

    ngx_http_collab_store_presence_args(doc, "collab_presence_list", argv,
                                        argvlen, kpres, kexp, chan);
    argv[7] = (char *) smax;
    argvlen[7] = ngx_sprintf(smax, "%ui", max) - smax;

    return ngx_http_collab_redis_command(ngx_http_collab_redis_for_doc(doc, 0),
                                         cmd, 8, argv, argvlen);
}


static void
ngx_http_collab_store_presence_list_reply(ngx_http_collab_cmd_t *cmd,
    redisReply *reply)
{
    off_t                             seq;
    ngx_uint_t                        i, gen;
    ngx_str_t                         doc;
    u_char                            name[NGX_HTTP_COLLAB_DOC_MAX];
    ngx_http_collab_session_t        *s;
    ngx_http_collab_presence_list_t   pl;

    s = cmd->session;
    gen = cmd->slot;
    doc.len = ngx_min(cmd->doc.len, NGX_HTTP_COLLAB_DOC_MAX);
    doc.data = ngx_cpymem(name, cmd->doc.data, doc.len) - doc.len;

    ngx_http_collab_cmd_free(cmd);

    ngx_memzero(&pl, sizeof(ngx_http_collab_presence_list_t));

    if (reply == NULL) {
        pl.status = NGX_AGAIN;

    } else if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 2
               || reply->element[0]->type != REDIS_REPLY_STRING
               || reply->element[1]->type != REDIS_REPLY_INTEGER)
    {
        pl.status = NGX_ERROR;

    } else {
        seq = ngx_atoof((u_char *) reply->element[0]->str,
                        reply->element[0]->len);
        pl.pseq = seq < 0 ? 0 : (uint64_t) seq;
        pl.count = reply->element[1]->integer < 0
                   ? 0 : (ngx_uint_t) reply->element[1]->integer;
        pl.entries = reply->element + 2;
        pl.nentries = reply->elements - 2;

        for (i = 0; i < pl.nentries; i++) {
            if (pl.entries[i]->type != REDIS_REPLY_STRING) {
                pl.status = NGX_ERROR;
                break;
            }
        }
    }

    ngx_http_collab_presence_snapshot(s, &doc, gen, &pl);
}
