//! The Lua scripts: every write is one script touching the value key (`KEYS[1]`) and its
//! metadata hash (`KEYS[2]`) atomically. Both keys share a hash slot (see the crate docs), so
//! the scripts are valid on Redis Cluster too.

use std::sync::LazyLock;

use fred::types::scripts::Script;

/// Shared helpers, prepended to every script.
///
/// * `next_index`: `max(previous index + 1, server time in µs)`. The previous index is kept
///   in the metadata hash while the key exists; the server clock makes a re-created key
///   (whose metadata was deleted with it) start above every index it had before.
/// * `settle`: after deleting a key whose index is at or just ahead of the server clock
///   (several writes within one microsecond), waits — at most ~2 ms, in practice never — until
///   the clock has passed it, so that a re-create in the next microsecond still gets a higher
///   index.
const PRELUDE: &str = r#"
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function fmt(n) return string.format('%.0f', n) end
local function next_index(meta)
  local old = tonumber(redis.call('HGET', meta, 'v') or '0') or 0
  local n = now_us()
  if old + 1 > n then n = old + 1 end
  return n
end
local function settle(idx)
  if not idx then return end
  local n = now_us()
  if idx >= n and idx - n < 2000 then
    while now_us() <= idx do end
  end
end
local function write(value, ttl, owner)
  local idx = next_index(KEYS[2])
  if ttl > 0 then
    redis.call('SET', KEYS[1], value, 'PX', ttl)
  else
    redis.call('SET', KEYS[1], value)
  end
  redis.call('DEL', KEYS[2])
  if owner then
    redis.call('HSET', KEYS[2], 'v', fmt(idx), 'o', owner, 'h', redis.sha1hex(value))
  else
    redis.call('HSET', KEYS[2], 'v', fmt(idx))
  end
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
  return fmt(idx)
end
-- The lock is ours: our owner token, and the value is still the one we wrote (another
-- client's plain SET replaces the value without touching the metadata).
local function owned(token)
  if redis.call('HGET', KEYS[2], 'o') ~= token then return false end
  local v = redis.call('GET', KEYS[1])
  if not v then return false end
  return redis.sha1hex(v) == redis.call('HGET', KEYS[2], 'h')
end
"#;

/// `GET`: nil when absent, else `{value, index, pttl}`. A value without metadata (written by
/// another client) reports index 1.
const GET: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local idx = redis.call('HGET', KEYS[2], 'v') or '1'
return {v, idx, redis.call('PTTL', KEYS[1])}
"#;

/// `PUT value ttl_ms` → new index.
const PUT: &str = r#"
return write(ARGV[1], tonumber(ARGV[2]), nil)
"#;

/// `ATOMIC_PUT value ttl_ms expected` (`expected == ''`: create only) → new index, or
/// `!exists` / `!notfound` / `!modified`.
const ATOMIC_PUT: &str = r#"
local exists = redis.call('EXISTS', KEYS[1]) == 1
if ARGV[3] == '' then
  if exists then return '!exists' end
else
  if not exists then return '!notfound' end
  local cur = redis.call('HGET', KEYS[2], 'v') or '1'
  if cur ~= ARGV[3] then return '!modified' end
end
return write(ARGV[1], tonumber(ARGV[2]), nil)
"#;

/// `ATOMIC_DELETE expected` → `ok` / `!notfound` / `!modified`.
const ATOMIC_DELETE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return '!notfound' end
local cur = redis.call('HGET', KEYS[2], 'v') or '1'
if cur ~= ARGV[1] then return '!modified' end
redis.call('DEL', KEYS[1], KEYS[2])
settle(tonumber(cur))
return 'ok'
"#;

/// `DELETE` → 1 if the value existed, else 0. Removes the metadata too.
const DELETE: &str = r#"
local existed = redis.call('EXISTS', KEYS[1])
local cur = redis.call('HGET', KEYS[2], 'v')
redis.call('DEL', KEYS[1], KEYS[2])
if cur then settle(tonumber(cur)) end
return existed
"#;

/// `LOCK_ACQUIRE value ttl_ms token` → new index (the fencing token), or `!held` when the
/// key exists (`SET NX` semantics; the owner token goes into the metadata). Idempotent per
/// token: a retry after a lost reply finds the lock already ours and returns its index.
const LOCK_ACQUIRE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  -- Our own earlier attempt got through but its reply was lost: it is ours.
  if owned(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
    return redis.call('HGET', KEYS[2], 'v')
  end
  return '!held'
end
return write(ARGV[1], tonumber(ARGV[2]), ARGV[3])
"#;

/// `LOCK_RENEW token ttl_ms` → 1 renewed (both keys' TTL reset), 0 not ours any more
/// (deleted, expired, taken over, or overwritten by any client).
const LOCK_RENEW: &str = r#"
if not owned(ARGV[1]) then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"#;

/// `LOCK_CHECK token` → 1 while the key exists and holds our token, else 0. Read only.
const LOCK_CHECK: &str = r#"
if not owned(ARGV[1]) then return 0 end
return 1
"#;

/// `LOCK_RELEASE token` → 1 deleted, 0 not ours (left alone).
const LOCK_RELEASE: &str = r#"
if not owned(ARGV[1]) then return 0 end
local cur = redis.call('HGET', KEYS[2], 'v')
redis.call('DEL', KEYS[1], KEYS[2])
settle(tonumber(cur))
return 1
"#;

/// The compiled scripts (SHA1 computed once).
pub(crate) struct Scripts {
    pub get: Script,
    pub put: Script,
    pub atomic_put: Script,
    pub atomic_delete: Script,
    pub delete: Script,
    pub lock_acquire: Script,
    pub lock_renew: Script,
    pub lock_check: Script,
    pub lock_release: Script,
}

fn with_prelude(body: &str) -> Script {
    Script::from_lua(format!("{PRELUDE}\n{body}"))
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    get: Script::from_lua(GET),
    put: with_prelude(PUT),
    atomic_put: with_prelude(ATOMIC_PUT),
    atomic_delete: with_prelude(ATOMIC_DELETE),
    delete: with_prelude(DELETE),
    lock_acquire: with_prelude(LOCK_ACQUIRE),
    lock_renew: with_prelude(LOCK_RENEW),
    lock_check: with_prelude(LOCK_CHECK),
    lock_release: with_prelude(LOCK_RELEASE),
});
