//! TTL arithmetic shared by the backends that enforce expiry on read (the server deletes
//! expired keys late or lazily, but readers must never see them).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The absolute deadline, in Unix milliseconds, of a key written now with `ttl`.
pub fn deadline_millis(ttl: Duration) -> u64 {
    now_millis().saturating_add(ttl.as_millis() as u64)
}

/// True when a key with this deadline (Unix milliseconds; 0 = none) has expired.
pub fn is_expired(deadline_millis: u64) -> bool {
    deadline_millis != 0 && deadline_millis <= now_millis()
}

/// Rounds a TTL up to whole seconds, for servers whose TTLs are in seconds (etcd leases,
/// DynamoDB's TTL attribute). Never returns zero.
pub fn whole_seconds_up(ttl: Duration) -> u64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        assert_eq!(whole_seconds_up(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds_up(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds_up(Duration::from_secs(2)), 2);
        assert!(!is_expired(0));
        assert!(is_expired(1));
        assert!(!is_expired(deadline_millis(Duration::from_secs(10))));
    }
}
