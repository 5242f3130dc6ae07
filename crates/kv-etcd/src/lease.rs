//! Leases of keys written with a TTL, whose ID carries the key's deadline.
//!
//! etcd enforces a TTL by expiring the key's lease, but etcd 3.4 restores every lease to its
//! **full** TTL when it restarts (lease checkpoints are not persisted before 3.6): a key
//! written just before a crash would outlive its TTL by the outage plus a whole TTL. So this
//! crate chooses the ID of every lease it grants for a TTL write (etcd lets the client choose
//! it in `LeaseGrant`) and writes the key's absolute deadline into it. Every key/value etcd
//! returns carries its lease ID, so readers recognise a key past its deadline without asking
//! anything, treat it as absent and revoke its lease (etcd then deletes the key, which CAS,
//! watches and other clients see).
//!
//! The 64 bits of such an ID, most significant first:
//!
//! | bits | content |
//! | --- | --- |
//! | 63 | 1: the ID is negative. etcd numbers the leases it chooses with positive IDs only (`LeaseGrant` masks the sign bit), so no server-chosen ID (other programs', this crate's lock leases) ever looks like ours |
//! | 62 | 0 |
//! | 61–20 | the deadline in Unix milliseconds (42 bits: until the year 2109) |
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::LeaseGrantOptions;
use kv_core::{Error, Result};

use crate::client::Inner;
use crate::store::CLOCK_TOLERANCE;

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
fn encode(deadline_ms: u64, random: u64) -> i64 {
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

/// When (Unix milliseconds) readers start treating a key bound to `lease` as absent: the
/// deadline plus [`CLOCK_TOLERANCE`], so that a reader whose clock runs ahead of the writer's
/// by less than that never drops a key before its TTL. `None` when the lease is not ours.
pub(crate) fn expiry(lease: i64) -> Option<u64> {
    deadline(lease).map(|d| d.saturating_add(CLOCK_TOLERANCE.as_millis() as u64))
}

/// True when `lease` is one of this crate's TTL leases and its key is past its expiry.
pub(crate) fn is_expired(lease: i64) -> bool {
    expiry(lease).is_some_and(|at| kv_core::ttl::now_millis() >= at)
}

/// Every lease ID of this crate whose key is expired now is below this value, and every
/// other lease ID (none, positive, ours not expired yet) is at or above it. Used as
/// `lease > expired_below() - 1` in transactions that must not act on an expired key.
pub(crate) fn expired_below() -> i64 {
    let cutoff = kv_core::ttl::now_millis().saturating_sub(CLOCK_TOLERANCE.as_millis() as u64);
    // Deadlines up to `cutoff` (inclusive) are expired: IDs below the first ID of `cutoff + 1`.
    (SIGN | ((cutoff + 1).min(DEADLINE_LIMIT - 1) << DEADLINE_SHIFT)) as i64
}

/// Random bits for lease IDs: std's per-instance random hasher keys, a counter and the time.
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u64(kv_core::ttl::now_millis());
    mix(hasher.finish())
}

/// Grants the lease of a write with `ttl`: etcd's TTL is `ttl` rounded up to whole seconds,
/// the ID carries the deadline (now + `ttl`, by this machine's clock).
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
        let deadline = kv_core::ttl::now_millis().saturating_add(ttl_ms);
        let mut options = LeaseGrantOptions::new();
        // A deadline beyond 2109 does not fit: etcd's own expiry has to do.
        if deadline < DEADLINE_LIMIT {
            options = options.with_id(encode(deadline, random()));
        }
        let mut lease = inner.lease.clone();
        match inner
            .call(operation, lease.grant(seconds, Some(options)))
            .await
        {
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
        let tolerance = CLOCK_TOLERANCE.as_millis() as u64;
        let past = encode(now - tolerance - 1000, 5);
        let recent = encode(now - tolerance / 2, 5);
        let future = encode(now + 5000, 5);
        assert!(is_expired(past));
        assert!(!is_expired(recent), "within the clock tolerance");
        assert!(!is_expired(future));
        assert!(!is_expired(0) && !is_expired(42));
        let below = expired_below();
        assert!(past < below);
        assert!(recent >= below && future >= below && 0 >= below && 42 >= below);
    }
}
