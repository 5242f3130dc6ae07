//! Leases of keys written with a TTL, whose ID carries the key's deadline.
//!
//! etcd enforces a TTL by expiring the key's lease, but etcd 3.4 restores every lease to its
//! **full** TTL when it restarts (lease checkpoints are not persisted before 3.6): a key
//! written just before a crash would outlive its TTL by the outage plus a whole TTL. So this
//! crate chooses the ID of every lease it grants for a TTL write (etcd lets the client choose
//! it in `LeaseGrant`) and writes the key's absolute deadline into it, in the **server's**
//! time as [`crate::clock`] estimates it (the latest the server's time can be + the TTL).
//! Every key/value etcd returns carries its lease ID, so readers recognise a key past its
//! deadline (the earliest the server's time can be has reached it) without asking anything,
//! treat it as absent and revoke its lease (etcd then deletes the key, which CAS, watches and
//! other clients see). While a handle does not know the server's time, it writes no deadline
//! and hides nothing.
//!
//! The 64 bits of such an ID, most significant first:
//!
//! | bits | content |
//! | --- | --- |
//! | 63 | 1: the ID is negative. etcd numbers the leases it chooses with positive IDs only (`LeaseGrant` masks the sign bit), so no server-chosen ID (other programs', this crate's lock leases) ever looks like ours |
//! | 62 | 0 |
//! | 61–20 | the deadline in the server's Unix milliseconds (42 bits: until the year 2109) |
//! | 19–10 | random, so that writers with the same deadline pick different IDs |
//! | 9–0 | a checksum of bits 10–61, against negative IDs other programs might choose |
//!
//! A positive marker bit would not do: etcd's own IDs start with 16 bits of the member ID, so
//! bit 62, for instance, is set in every lease ID of about half of all members, and readers
//! would take their keys for expired and revoke their leases.
//!
//! IDs grow with the deadline, so "bound to one of our leases whose deadline passed before
//! `t`" is one lease comparison etcd can evaluate in a transaction ([`expired_below`]).

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::LeaseGrantOptions;
use kv_core::{Error, Result};

use crate::client::Inner;
use crate::clock::{ServerClock, ServerTime};

const SIGN: u64 = 1 << 63;
const TAG_MASK: u64 = 0b11 << 62;
const DEADLINE_SHIFT: u32 = 20;
const DEADLINE_LIMIT: u64 = 1 << 42;
const RANDOM_SHIFT: u32 = 10;
const RANDOM_MASK: u64 = (1 << 10) - 1;
const CHECK_MASK: u64 = (1 << 10) - 1;

/// How many IDs a grant tries before giving up (a collision needs the same millisecond and
/// the same 10 random bits: a retry is already rare).
const GRANT_ATTEMPTS: usize = 8;

/// A 64-bit mixer (splitmix64's finaliser).
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The ID of a lease whose key's deadline is `deadline_ms` (Unix milliseconds).
pub(crate) fn encode(deadline_ms: u64, random: u64) -> i64 {
    let body = (deadline_ms << DEADLINE_SHIFT) | ((random & RANDOM_MASK) << RANDOM_SHIFT);
    (SIGN | body | (mix(body) & CHECK_MASK)) as i64
}

/// The deadline (Unix milliseconds) a lease ID of this crate carries; `None` for every other
/// lease (none, server-chosen, or chosen by another program).
pub(crate) fn deadline(lease: i64) -> Option<u64> {
    let id = lease as u64;
    let body = id & !TAG_MASK & !CHECK_MASK;
    (id & TAG_MASK == SIGN && id & CHECK_MASK == mix(body) & CHECK_MASK)
        .then_some(body >> DEADLINE_SHIFT)
}

/// When (the server's Unix milliseconds) readers start treating a key bound to `lease` as
/// absent: its deadline. `None` when the lease is not ours.
pub(crate) fn expiry(lease: i64) -> Option<u64> {
    deadline(lease)
}

/// True when `lease` is one of this crate's TTL leases and the server's clock is certainly
/// past its deadline (the earliest the server's time can be is at or past it). Never true
/// while the server's time is not known well enough (see [`crate::clock`]).
pub(crate) fn is_expired(clock: &Arc<ServerClock>, lease: i64) -> bool {
    let Some(at) = expiry(lease) else {
        return false;
    };
    clock.now().is_some_and(|now| expired_at(at, now))
}

/// Whether a deadline has passed at the server time `now`.
fn expired_at(deadline: u64, now: ServerTime) -> bool {
    u64::try_from(now.earliest).is_ok_and(|earliest| earliest >= deadline)
}

/// Every lease ID of this crate whose key is expired now (as [`is_expired`]) is below this
/// value, and every other lease ID (none, positive, ours not expired yet) is at or above it.
/// Used as `lease > bound - 1` in transactions that must not act on an expired key. `None`
/// while the server's time is not known: nothing is expired then.
pub(crate) fn expired_below(clock: &Arc<ServerClock>) -> Option<i64> {
    clock.now().map(bound_below)
}

fn bound_below(now: ServerTime) -> i64 {
    let cutoff = u64::try_from(now.earliest).unwrap_or(0);
    // Deadlines up to `cutoff` (inclusive) are expired: IDs below the first ID of `cutoff + 1`.
    (SIGN | ((cutoff + 1).min(DEADLINE_LIMIT - 1) << DEADLINE_SHIFT)) as i64
}

/// Random bits for lease IDs: std's per-instance random hasher keys, a counter and the time.
pub(crate) fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u64(kv_core::ttl::now_millis());
    mix(hasher.finish())
}

/// Grants the lease of a write with `ttl`: etcd's TTL is `ttl` rounded up to whole seconds,
/// the ID carries the deadline: the latest the server's time can be now, + `ttl` (never
/// earlier than the true deadline). While the server's time is not known, etcd chooses the
/// ID: the key then carries no deadline and only etcd's own lease expires it.
pub(crate) async fn grant_ttl(
    inner: &Inner,
    ttl: Duration,
    operation: &'static str,
) -> Result<i64> {
    let seconds = kv_core::ttl::whole_seconds_up(ttl) as i64;
    let ttl_ms = ttl.as_nanos().div_ceil(1_000_000) as u64;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let deadline = inner.clock.now().map(|now| {
            u64::try_from(now.latest)
                .unwrap_or(0)
                .saturating_add(ttl_ms)
        });
        let options = match deadline {
            // A deadline beyond 2109 does not fit: etcd's own expiry has to do.
            Some(deadline) if deadline < DEADLINE_LIMIT => {
                Some(LeaseGrantOptions::new().with_id(encode(deadline, random())))
            }
            _ => None,
        };
        let mut lease = inner.lease.clone();
        match inner.call(operation, lease.grant(seconds, options)).await {
            Ok(response) => return Ok(response.id()),
            // Someone holds that very ID: draw new random bits.
            Err(Error::Backend { source, .. })
                if attempts < GRANT_ATTEMPTS
                    && source.to_string().contains("lease already exists") =>
            {
                tracing::debug!("lease ID taken, drawing another");
            }
            Err(error) => return Err(error),
        }
    }
}

/// Revokes leases, ignoring every failure: the server may have expired them already
/// (NotFound), the user may lack the permission (the keys stay hidden from this crate's
/// readers anyway), the server may be unreachable (the next reader tries again).
pub(crate) async fn revoke_all(inner: &Inner, mut leases: Vec<i64>) {
    use futures::StreamExt;
    leases.sort_unstable();
    leases.dedup();
    futures::stream::iter(leases)
        .for_each_concurrent(16, |id| async move {
            let mut lease = inner.lease.clone();
            match inner.call("lease revoke", lease.revoke(id)).await {
                Ok(_) => tracing::debug!(lease_id = id, "revoked the lease of an expired key"),
                Err(error) => tracing::debug!(%error, lease_id = id, "revoking a lease failed"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_deadline() {
        let now = kv_core::ttl::now_millis();
        for (deadline, random) in [(now, 0), (now + 10_000, 1023), (DEADLINE_LIMIT - 1, 7)] {
            let id = encode(deadline, random);
            assert!(id < 0, "negative: never an ID etcd chooses");
            assert_eq!(super::deadline(id), Some(deadline));
        }
        assert_ne!(encode(now, 1), encode(now, 2));
        // Server-chosen IDs (positive, any bit pattern) and no lease are never ours.
        for id in [
            0,
            1,
            0x1a15_a218_180c_3409,
            0x7fff_ffff_ffff_ffff,
            0x4000_0000_0000_0000,
        ] {
            assert_eq!(deadline(id), None, "{id:x}");
        }
        // A corrupted checksum is not ours either.
        assert_eq!(deadline(encode(now, 3) ^ 1), None);
    }

    #[test]
    fn expiry_and_the_transaction_bound_agree() {
        let now = kv_core::ttl::now_millis();
        // The server's time is known to be within [now, now + 300 ms].
        let server = ServerTime {
            earliest: now as i64,
            latest: now as i64 + 300,
        };
        let past = encode(now - 1000, 5);
        let exact = encode(now, 5);
        let within = encode(now + 200, 5);
        let future = encode(now + 5000, 5);
        assert!(expired_at(deadline(past).unwrap(), server));
        assert!(expired_at(deadline(exact).unwrap(), server));
        assert!(
            !expired_at(deadline(within).unwrap(), server),
            "the server may not have reached it yet"
        );
        assert!(!expired_at(deadline(future).unwrap(), server));
        let below = bound_below(server);
        assert!(past < below && exact < below);
        assert!(within >= below && future >= below && 0 >= below && 42 >= below);
    }

    #[test]
    fn nothing_expires_while_the_server_time_is_unknown() {
        let clock = ServerClock::unknown();
        let past = encode(kv_core::ttl::now_millis() - 60_000, 5);
        assert!(!is_expired(&clock, past));
        assert_eq!(expired_below(&clock), None);
        // With a known server time, it does (whatever this machine's clock says).
        let anchor = std::time::Instant::now();
        let server_now = kv_core::ttl::now_millis() as i64 + 3_600_000;
        let clock = ServerClock::fixed(crate::clock::Estimate::from_sample(
            server_now, anchor, anchor,
        ));
        assert!(is_expired(&clock, past));
        assert!(is_expired(&clock, encode(server_now as u64 - 1, 1)));
        assert!(!is_expired(&clock, encode(server_now as u64 + 1500, 1)));
        assert!(!is_expired(&clock, 42));
    }
}
