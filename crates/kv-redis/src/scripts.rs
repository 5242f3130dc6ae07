//! The Lua scripts: every write is one script touching the value key (`KEYS[1]`) and its
//! metadata key (`KEYS[2]`) atomically; the transaction script touches several such pairs.
//! A value key and its metadata key share a hash slot (see the crate docs), so the one-key
//! scripts are valid on Redis Cluster too; the transaction script only when all its keys
//! share one slot (see `RedisStore::transaction_slot`).

use std::sync::LazyLock;

use fred::types::scripts::Script;

/// Shared helpers, prepended to every script.
///
/// * `meta_at`: the metadata record of a value key, `index, digest, owner` (owner `nil`
///   unless a lock holds the key), or `nil` when there is none. The record is one string,
///   `"<index> <sha1 hex>"` or `"<index> <sha1 hex> <owner>"`, so that a plain `MGET` reads it
///   with the value. A hash with the fields `v`, `h`, `o` (the layout of earlier builds) is read
///   the same way and replaced by the next write. Anything else at that name (a string that
///   does not parse, a key of another type: another program wrote a reserved name) reads as
///   void metadata, index `0` and a digest no value has.
/// * `next_index`: `max(previous index + 1, server time in µs)`. The previous index is kept
///   in the metadata while the key exists; the server clock makes a re-created key (whose
///   metadata was deleted with it) start above every index it had before, and lifts every
///   key above the indexes handed out before a restart from an older snapshot.
/// * `settle`: after deleting a key whose index is at or just ahead of the server clock
///   (several writes within one microsecond), waits — at most ~2 ms, in practice never — until
///   the clock has passed it, so that a re-create in the next microsecond still gets a higher
///   index.
/// * `is_value`: the value key holds a string (a key of another type, written by another
///   program, is no store value).
/// * `current_index`: the index of the value now at the key. The metadata's index counts only
///   while its digest is the SHA-1 of that very value; otherwise another program replaced the
///   value (a plain `SET`, or `DEL` + `SET`, which leaves the metadata behind) and that
///   version is void (`false`). No metadata at all: `'1'` (never written through this crate).
const PRELUDE: &str = r#"
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function fmt(n) return string.format('%.0f', n) end
local function meta_at(meta)
  local s = redis.pcall('GET', meta)
  if not s then return nil end
  if type(s) == 'string' then
    local v, h, o = string.match(s, '^(%d+) (%x+) ?(%x*)$')
    if not v then return '0', '' end
    if o == '' then o = nil end
    return v, h, o
  end
  -- WRONGTYPE: the hash of earlier builds, or another program's key.
  if redis.call('TYPE', meta)['ok'] ~= 'hash' then return '0', '' end
  local m = redis.call('HMGET', meta, 'v', 'h', 'o')
  if not m[1] then return nil end
  return m[1], m[2] or '', m[3] or nil
end
local function next_index(old)
  local prev = tonumber(old or '0') or 0
  local n = now_us()
  if prev + 1 > n then n = prev + 1 end
  return n
end
local function settle(idx)
  if not idx then return end
  local n = now_us()
  if idx >= n and idx - n < 2000 then
    while now_us() <= idx do end
  end
end
-- Writes the metadata record of a value written with `ttl` (ms, 0: none).
local function set_meta(meta, idx, digest, ttl, owner)
  local record = idx .. ' ' .. digest
  if owner then record = record .. ' ' .. owner end
  if ttl > 0 then
    redis.call('SET', meta, record, 'PX', ttl)
  else
    redis.call('SET', meta, record)
  end
end
-- The `_at` helpers take the value key and its metadata key; the short forms work on
-- KEYS[1] and KEYS[2] (every script but the transaction's touches one key).
local function write_at(key, meta, value, ttl, owner)
  local idx = fmt(next_index(meta_at(meta)))
  if ttl > 0 then
    redis.call('SET', key, value, 'PX', ttl)
  else
    redis.call('SET', key, value)
  end
  set_meta(meta, idx, redis.sha1hex(value), ttl, owner)
  return idx
end
local function write(value, ttl, owner)
  return write_at(KEYS[1], KEYS[2], value, ttl, owner)
end
local function is_value_at(key)
  return redis.call('TYPE', key)['ok'] == 'string'
end
local function is_value()
  return is_value_at(KEYS[1])
end
local function current_index_at(meta, value)
  local v, h = meta_at(meta)
  if not v then return '1' end
  if h == redis.sha1hex(value) then return v end
  return false
end
local function current_index(value)
  return current_index_at(KEYS[2], value)
end
-- A CAS precondition on the value now at the key: its current index is `expected`, and for
-- a value without metadata (index 1, nothing ties it to one incarnation) it is still the
-- value the caller read (`previous`). Returns the refusal, or nil and the current index.
local function unchanged(expected, previous)
  if not is_value() then return '!notfound' end
  local value = redis.call('GET', KEYS[1])
  local cur = current_index(value)
  if cur ~= expected then return '!modified' end
  if cur == '1' and value ~= previous then return '!modified' end
  return nil, cur
end
-- The lock is ours: our owner token in the metadata, and the value is still the one we
-- wrote (another client's plain SET replaces the value without touching the metadata).
-- Returns the lock's index when it is ours, else false.
local function owned(token)
  local v, h, o = meta_at(KEYS[2])
  if not v or o ~= token then return false end
  if not is_value() then return false end
  if redis.sha1hex(redis.call('GET', KEYS[1])) ~= h then return false end
  return v
end
"#;

/// `GET`: nil when absent (or not a string), else `{value, index, pttl}`. A value without
/// metadata (written by another client only) reports index 1. A value whose metadata belongs
/// to another incarnation (replaced by another client) is adopted: it gets a fresh index,
/// above every earlier one, and metadata recording its digest (with the value's TTL), so that
/// every read until the next write reports that same index and CAS accepts it.
const GET: &str = r#"
if not is_value() then return false end
local v = redis.call('GET', KEYS[1])
local pttl = redis.call('PTTL', KEYS[1])
local old, digest = meta_at(KEYS[2])
local idx = '1'
if old then
  local sum = redis.sha1hex(v)
  if digest == sum then
    idx = old
  else
    idx = fmt(next_index(old))
    local ttl = 0
    if pttl > 0 then ttl = pttl end
    set_meta(KEYS[2], idx, sum, ttl, nil)
  end
end
return {v, idx, pttl}
"#;

/// `PUT value ttl_ms` → new index.
const PUT: &str = r#"
return write(ARGV[1], tonumber(ARGV[2]), nil)
"#;

/// `ATOMIC_PUT value ttl_ms expected previous` (`expected == ''`: create only; `previous`:
/// the caller's previous value when `expected` is 1, else empty) → new index, or `!exists` /
/// `!notfound` / `!modified`.
const ATOMIC_PUT: &str = r#"
if ARGV[3] == '' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return '!exists' end
else
  local refused = unchanged(ARGV[3], ARGV[4])
  if refused then return refused end
end
return write(ARGV[1], tonumber(ARGV[2]), nil)
"#;

/// `ATOMIC_DELETE expected previous` → `ok` / `!notfound` / `!modified`.
const ATOMIC_DELETE: &str = r#"
local refused, cur = unchanged(ARGV[1], ARGV[2])
if refused then return refused end
redis.call('DEL', KEYS[1], KEYS[2])
settle(tonumber(cur))
return 'ok'
"#;

/// `DELETE` → 1 if the value existed, else 0. Removes the metadata too; a key of another type
/// (no store value) is left alone.
const DELETE: &str = r#"
local existed = is_value()
local cur = meta_at(KEYS[2])
if existed then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  redis.call('DEL', KEYS[2])
end
if cur then settle(tonumber(cur)) end
if existed then return 1 end
return 0
"#;

/// `LOCK_ACQUIRE value ttl_ms token` → new index (the fencing token), or `!held` when the
/// key exists (`SET NX` semantics; the owner token goes into the metadata). Idempotent per
/// token: a retry after a lost reply finds the lock already ours and returns its index.
const LOCK_ACQUIRE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  -- Our own earlier attempt got through but its reply was lost: it is ours.
  local idx = owned(ARGV[3])
  if idx then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
    return idx
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
local cur = owned(ARGV[1])
if not cur then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
settle(tonumber(cur))
return 1
"#;

/// `TRANSACTION` (see `RedisStore::transaction`). `KEYS`: the value key and metadata key of
/// every distinct key of the transaction, in pairs (pair `n` is `KEYS[2n-1]`, `KEYS[2n]`).
/// `ARGV`: the number of conditions, then per condition its key's pair number, its kind
/// (`a` absent, `e` exists, `i` index equals, `l` lock held) and the expected index (empty
/// for `a`/`e`); then the number of operations, then per operation its key's pair number, its
/// kind (`p` put, `d` delete), the value and the TTL in ms (0: none; both empty for `d`).
///
/// Every condition is evaluated first against the key's index as `GET` would report it (a
/// value replaced by another program counts with the fresh index `GET` would give it, which
/// nobody can hold; nothing is written for it here). If any fails the reply is
/// `{'!failed', state_1, …, state_n}` — every condition key's index, `''` when absent — and
/// nothing has been written. Otherwise
/// every operation is applied exactly as `PUT` / `DELETE` apply it, and the reply is the new
/// index of every put, in operation order.
const TRANSACTION: &str = r#"
local function state(pair)
  local key, meta = KEYS[2 * pair - 1], KEYS[2 * pair]
  if not is_value_at(key) then return false end
  local cur = current_index_at(meta, redis.call('GET', key))
  if not cur then cur = fmt(next_index(meta_at(meta))) end
  return cur
end
local pos = 1
local nconds = tonumber(ARGV[pos]); pos = pos + 1
local states = {'!failed'}
local failed = false
for c = 1, nconds do
  local pair, kind, expected = tonumber(ARGV[pos]), ARGV[pos + 1], ARGV[pos + 2]
  pos = pos + 3
  local cur = state(pair)
  local holds
  if kind == 'a' then
    holds = not cur
  elseif kind == 'e' then
    holds = cur ~= false
  else
    holds = cur == expected
  end
  if not holds then failed = true end
  states[c + 1] = cur or ''
end
if failed then return states end
local nops = tonumber(ARGV[pos]); pos = pos + 1
-- Redis does not undo a script's writes when a later command fails. None below can fail:
-- `meta_at` reads a metadata key of any type, and SET and DEL replace or remove any type.
local indexes = {}
for o = 1, nops do
  local pair, kind, value, ttl = tonumber(ARGV[pos]), ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3]
  pos = pos + 4
  local key, meta = KEYS[2 * pair - 1], KEYS[2 * pair]
  if kind == 'p' then
    indexes[#indexes + 1] = write_at(key, meta, value, tonumber(ttl), nil)
  else
    local cur = meta_at(meta)
    if is_value_at(key) then
      redis.call('DEL', key, meta)
    else
      redis.call('DEL', meta)
    end
    if cur then settle(tonumber(cur)) end
  end
end
return indexes
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
    pub transaction: Script,
}

/// `body` preceded by the prelude's helpers it calls, directly or through another helper,
/// and no others: Lua creates every `local function` anew on each run of a script, and the
/// whole prelude costs the server about 1.4 µs per call (measured with `redis-benchmark`,
/// `EVAL` of the prelude and `return 1` against `return 1`).
fn with_prelude(body: &str) -> String {
    let helpers = helpers();
    let mut needed: Vec<bool> = helpers.iter().map(|(name, _)| calls(body, name)).collect();
    // Close over the helpers' own calls (a helper only calls those defined before it).
    for i in (0..helpers.len()).rev() {
        if needed[i] {
            for (j, (name, _)) in helpers.iter().enumerate().take(i) {
                needed[j] |= calls(&helpers[i].1, name);
            }
        }
    }
    let mut script = String::new();
    for ((_, text), _) in helpers.iter().zip(&needed).filter(|(_, n)| **n) {
        script.push_str(text);
    }
    script.push_str(body);
    script
}

/// The prelude cut into its helpers, in order: each `local function` with its body and the
/// comment lines just above it.
fn helpers() -> Vec<(&'static str, String)> {
    let mut helpers: Vec<(&'static str, String)> = Vec::new();
    let mut comments = String::new();
    for line in PRELUDE.lines() {
        if let Some(rest) = line.strip_prefix("local function ") {
            let name = rest.split('(').next().unwrap_or(rest);
            let mut text = std::mem::take(&mut comments);
            text.push_str(line);
            text.push('\n');
            helpers.push((name, text));
        } else if line.starts_with("--") {
            comments.push_str(line);
            comments.push('\n');
        } else if let Some((_, text)) = helpers.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    helpers
}

/// Whether Lua `code` calls the function `name` (not a longer name ending in it).
fn calls(code: &str, name: &str) -> bool {
    let call = format!("{name}(");
    code.match_indices(&call).any(|(at, _)| {
        !code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    })
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let script = |body: &str| Script::from_lua(with_prelude(body));
    Scripts {
        get: script(GET),
        put: script(PUT),
        atomic_put: script(ATOMIC_PUT),
        atomic_delete: script(ATOMIC_DELETE),
        delete: script(DELETE),
        lock_acquire: script(LOCK_ACQUIRE),
        lock_renew: script(LOCK_RENEW),
        lock_check: script(LOCK_CHECK),
        lock_release: script(LOCK_RELEASE),
        transaction: script(TRANSACTION),
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    fn defined(script: &str) -> Vec<&str> {
        script
            .lines()
            .filter_map(|l| l.strip_prefix("local function "))
            .map(|rest| rest.split('(').next().unwrap())
            .collect()
    }

    #[test]
    fn the_prelude_is_cut_at_every_helper() {
        let names: Vec<&str> = helpers().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, defined(PRELUDE));
        assert!(names.len() >= 10, "{names:?}");
        let joined: String = helpers().into_iter().map(|(_, t)| t).collect();
        let code = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            code(&joined),
            code(PRELUDE),
            "nothing of the prelude is lost"
        );
    }

    #[test]
    fn each_script_defines_exactly_the_helpers_it_calls() {
        assert!(calls("x = write(1)", "write"));
        assert!(!calls("x = write_at(1)", "write"));
        assert!(!calls("x = rewrite(1)", "write"));
        assert!(!calls("string.fmt(1)", "fmt"));
        let names: Vec<&str> = helpers().iter().map(|(n, _)| *n).collect();
        for (body, wanted) in [
            (
                PUT,
                &[
                    "now_us",
                    "fmt",
                    "meta_at",
                    "next_index",
                    "set_meta",
                    "write_at",
                    "write",
                ][..],
            ),
            (
                LOCK_CHECK,
                &["meta_at", "is_value_at", "is_value", "owned"][..],
            ),
            (
                DELETE,
                &["now_us", "meta_at", "settle", "is_value_at", "is_value"][..],
            ),
        ] {
            let script = with_prelude(body);
            let mut got = defined(&script);
            got.sort_unstable();
            let mut want = wanted.to_vec();
            want.sort_unstable();
            assert_eq!(got, want);
        }
        // Every helper any script calls is defined before the script's body.
        for body in [
            GET,
            PUT,
            ATOMIC_PUT,
            ATOMIC_DELETE,
            DELETE,
            LOCK_ACQUIRE,
            LOCK_RENEW,
            LOCK_CHECK,
            LOCK_RELEASE,
            TRANSACTION,
        ] {
            let script = with_prelude(body);
            for name in &names {
                if calls(&script, name) {
                    assert!(defined(&script).contains(name), "{name} missing");
                }
            }
        }
    }
}
