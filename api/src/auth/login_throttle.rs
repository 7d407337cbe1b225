//! Login throttling: repeated failed logins for one email, or from one
//! client address, are refused with 429 and `Retry-After` before any
//! password work is done, so guessing is slow and a flood is cheap to turn
//! away. Successful logins clear the email's failures. First-admin
//! registrations, which hash a password too, are counted per address the
//! same way (every attempt counts: there is only ever one that succeeds).
//!
//! The address is the client's as [`crate::auth::client_addr`] resolves it
//! (through trusted proxies, IPv6 by /64).
//!
//! Per process, in memory: with several api instances behind a balancer each
//! counts on its own, which bounds guessing at `instances x limit` per window.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept at most; past it, expired ones are dropped (and if every
/// entry is live, the oldest key goes) so memory stays bounded under a flood
/// of distinct emails.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
pub struct ThrottleLimits {
    pub max_failures_per_email: usize,
    pub max_failures_per_ip: usize,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Email(String),
    Ip(IpAddr),
    Registration(IpAddr),
}

#[derive(Debug)]
pub struct LoginThrottle {
    limits: ThrottleLimits,
    failures: Mutex<HashMap<Key, VecDeque<Instant>>>,
}

impl LoginThrottle {
    pub fn new(limits: ThrottleLimits) -> Self {
        Self {
            limits,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The counters a login attempt is checked against, with their limits.
    fn login_keys(&self, email: &str, ip: Option<IpAddr>) -> Vec<(Key, usize)> {
        let mut keys = vec![(
            Key::Email(email.trim().to_lowercase()),
            self.limits.max_failures_per_email,
        )];
        if let Some(ip) = ip {
            keys.push((Key::Ip(ip), self.limits.max_failures_per_ip));
        }
        keys
    }

    /// Admits a login attempt and counts it as a failure until
    /// [`Self::record_success`] says otherwise, in one step under the lock so
    /// that concurrent guesses cannot all slip past the limit while earlier
    /// ones are still being checked. `Err(wait)`: refuse it for `wait`.
    pub fn begin_attempt(
        &self,
        email: &str,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Duration> {
        self.admit(&self.login_keys(email, ip), now)
    }

    /// Admits a first-admin registration from `ip` and counts it, like
    /// [`Self::begin_attempt`]; without an address there is nothing to count.
    pub fn begin_registration(&self, ip: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        match ip {
            Some(ip) => self.admit(
                &[(Key::Registration(ip), self.limits.max_failures_per_ip)],
                now,
            ),
            None => Ok(()),
        }
    }

    fn admit(&self, keys: &[(Key, usize)], now: Instant) -> Result<(), Duration> {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(wait) = self.blocked_for(&map, keys, now) {
            return Err(wait);
        }
        self.push_failure(&mut map, keys, now);
        Ok(())
    }

    /// `Some(wait)` when this login must be refused for `wait` (tests read
    /// the state without admitting an attempt).
    #[cfg(test)]
    pub fn check(&self, email: &str, ip: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        self.blocked_for(&map, &self.login_keys(email, ip), now)
    }

    fn blocked_for(
        &self,
        map: &HashMap<Key, VecDeque<Instant>>,
        keys: &[(Key, usize)],
        now: Instant,
    ) -> Option<Duration> {
        keys.iter()
            .filter_map(|(key, limit)| {
                let limit = *limit;
                let times = map.get(key)?;
                let live: Vec<&Instant> = times
                    .iter()
                    .filter(|t| now.duration_since(**t) < self.limits.window)
                    .collect();
                if live.len() >= limit {
                    // Free again when the oldest failure that still counts
                    // leaves the window.
                    let oldest = live[live.len() - limit];
                    Some(
                        self.limits
                            .window
                            .saturating_sub(now.duration_since(*oldest)),
                    )
                } else {
                    None
                }
            })
            .max()
    }

    #[cfg(test)]
    pub fn record_failure(&self, email: &str, ip: Option<IpAddr>, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let keys = self.login_keys(email, ip);
        self.push_failure(&mut map, &keys, now);
    }

    fn push_failure(
        &self,
        map: &mut HashMap<Key, VecDeque<Instant>>,
        keys: &[(Key, usize)],
        now: Instant,
    ) {
        if map.len() >= MAX_KEYS {
            let window = self.limits.window;
            map.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < window)
            });
            if map.len() >= MAX_KEYS {
                map.clear();
            }
        }
        for (key, cap) in keys {
            let times = map.entry(key.clone()).or_default();
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.limits.window)
                || times.len() >= *cap
            {
                times.pop_front();
            }
            times.push_back(now);
        }
    }

    /// A login that turned out right: the email's failures are cleared and
    /// the attempt counted against the address (by [`Self::record_failure`],
    /// before the password was checked) is taken back.
    pub fn record_success(&self, email: &str, ip: Option<IpAddr>) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&Key::Email(email.trim().to_lowercase()));
        if let Some(times) = ip.and_then(|ip| map.get_mut(&Key::Ip(ip))) {
            times.pop_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(ThrottleLimits {
            max_failures_per_email: 3,
            max_failures_per_ip: 5,
            window: Duration::from_secs(60),
        })
    }

    #[test]
    fn email_blocked_after_limit_until_window_passes() {
        let t = throttle();
        let start = Instant::now();
        let ip: Option<IpAddr> = "10.0.0.1".parse().ok();
        for i in 0..3 {
            assert_eq!(t.check("A@x.io", ip, start), None, "attempt {i}");
            t.record_failure("a@x.io", ip, start + Duration::from_secs(i));
        }
        let wait = t
            .check("a@X.io", ip, start + Duration::from_secs(10))
            .expect("blocked");
        assert_eq!(wait, Duration::from_secs(50));
        assert_eq!(t.check("a@x.io", ip, start + Duration::from_secs(61)), None);
        // Another email from another address is unaffected.
        assert_eq!(t.check("b@x.io", "10.0.0.2".parse().ok(), start), None);
    }

    #[test]
    fn ip_blocked_across_emails_and_success_clears_email_only() {
        let t = throttle();
        let now = Instant::now();
        let ip: Option<IpAddr> = "10.0.0.9".parse().ok();
        for i in 0..5 {
            t.record_failure(&format!("u{i}@x.io"), ip, now);
        }
        assert!(t.check("fresh@x.io", ip, now).is_some());
        assert!(
            t.check("fresh@x.io", "10.0.0.10".parse().ok(), now)
                .is_none()
        );
        t.record_failure("c@x.io", None, now);
        t.record_failure("c@x.io", None, now);
        t.record_success("c@x.io", None);
        t.record_failure("c@x.io", None, now);
        assert!(t.check("c@x.io", None, now).is_none());
    }

    #[test]
    fn registrations_count_per_address_apart_from_logins() {
        let t = throttle();
        let now = Instant::now();
        let ip: Option<IpAddr> = "10.0.0.7".parse().ok();
        for i in 0..5 {
            assert_eq!(t.begin_registration(ip, now), Ok(()), "attempt {i}");
        }
        assert!(t.begin_registration(ip, now).is_err());
        assert_eq!(t.begin_registration("10.0.0.8".parse().ok(), now), Ok(()));
        // Logins from the same address are not charged for registrations.
        assert_eq!(t.check("a@x.io", ip, now), None);
        assert_eq!(
            t.begin_registration(ip, now + Duration::from_secs(61)),
            Ok(())
        );
    }
}
