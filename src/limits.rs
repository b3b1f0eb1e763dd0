//! Rate limits (governor): login, registration and email look-up throttles;
//! the per-connection event budgets of the hub build on the same helpers.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Emails per room-creation request (`member_emails`): each is a look-up
/// charged to the caller's budget (`EMAIL_LOOKUPS_PER_MINUTE`, never below
/// this), so one request never asks about more than a minute's worth.
/// Declared here, with the budget it bounds, so the configuration can
/// check that floor without importing the HTTP layer.
pub const MAX_MEMBER_EMAILS: usize = 20;

/// The budgets, from the configuration (`LOGIN_ATTEMPTS_PER_MINUTE`,
/// `WS_HANDSHAKES_PER_IP_PER_SEC`, `EMAIL_LOOKUPS_PER_MINUTE`).
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Login attempts allowed per account per minute (and, times four, per IP).
    pub login_attempts_per_minute: u32,
    /// WebSocket handshakes per client address per second.
    pub handshakes_per_ip_per_sec: u32,
    /// Look-ups by email (rooms' `member_emails`, `{"email"}`) per user per
    /// minute, four times that per client address; never below
    /// [`MAX_MEMBER_EMAILS`], so that the largest request fits a fresh
    /// budget.
    pub email_lookups_per_minute: u32,
}

/// Keyed limiters shared by all requests of the process.
pub struct Limits {
    login_per_account: DefaultKeyedRateLimiter<String>,
    login_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    register_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    handshake_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    email_lookups_per_user: DefaultKeyedRateLimiter<String>,
    email_lookups_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

/// Time to wait before retrying, in milliseconds.
pub type RetryAfterMs = u64;

fn per_minute(n: u32) -> Quota {
    // `max(1)` makes the NonZero conversion infallible.
    Quota::per_minute(NonZeroU32::new(n.max(1)).expect("n.max(1) is non-zero"))
}

impl Limits {
    /// The limiters for the configured budgets.
    pub fn from_settings(s: &LimitSettings) -> Self {
        Limits::new(s.login_attempts_per_minute, s.handshakes_per_ip_per_sec, s.email_lookups_per_minute)
    }

    /// `login_per_minute` attempts per account; four times that per source IP
    /// (several people may share a NAT). The same shape for look-ups by
    /// email: `email_lookups_per_minute` per user, four times that per IP.
    pub fn new(login_per_minute: u32, handshakes_per_ip_per_sec: u32, email_lookups_per_minute: u32) -> Self {
        Limits {
            login_per_account: RateLimiter::keyed(per_minute(login_per_minute)),
            login_per_ip: RateLimiter::keyed(per_minute(login_per_minute.saturating_mul(4))),
            register_per_ip: RateLimiter::keyed(per_minute(login_per_minute)),
            handshake_per_ip: RateLimiter::keyed(Quota::per_second(
                NonZeroU32::new(handshakes_per_ip_per_sec.max(1)).expect("max(1) is non-zero"),
            )),
            email_lookups_per_user: RateLimiter::keyed(per_minute(email_lookups_per_minute)),
            email_lookups_per_ip: RateLimiter::keyed(per_minute(email_lookups_per_minute.saturating_mul(4))),
            clock: DefaultClock::default(),
        }
    }

    /// Checks both login budgets. The account key is the lower-cased email,
    /// whether or not such an account exists, so throttling reveals nothing.
    ///
    /// # Errors
    /// How long to wait when either budget is spent.
    pub fn check_login(&self, email_lower: &str, ip: IpAddr) -> Result<(), RetryAfterMs> {
        self.check(&self.login_per_ip, &ip)?;
        self.check(&self.login_per_account, &email_lower.to_owned())
    }

    /// # Errors
    /// How long to wait when the IP's registration budget is spent.
    pub fn check_register(&self, ip: IpAddr) -> Result<(), RetryAfterMs> {
        self.check(&self.register_per_ip, &ip)
    }

    /// WebSocket handshakes per source IP.
    ///
    /// # Errors
    /// How long to wait when the budget is spent.
    pub fn check_handshake(&self, ip: IpAddr) -> Result<(), RetryAfterMs> {
        self.check(&self.handshake_per_ip, &ip)
    }

    /// Charges `n` look-ups by email (one per address asked about,
    /// repeats included) to the user's and the client address's budgets:
    /// finding out whether an email has an account must stay as slow as
    /// registering with it would.
    ///
    /// # Errors
    /// How long to wait when either budget cannot pay for `n` now (also when
    /// `n` exceeds a whole budget; callers cap `n` below it).
    pub fn check_email_lookups(&self, user_id: &str, ip: IpAddr, n: u32) -> Result<(), RetryAfterMs> {
        let Some(n) = NonZeroU32::new(n) else { return Ok(()) };
        self.check_n(&self.email_lookups_per_ip, &ip, n)?;
        self.check_n(&self.email_lookups_per_user, &user_id.to_owned(), n)
    }

    fn check_n<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        n: NonZeroU32,
    ) -> Result<(), RetryAfterMs> {
        match limiter.check_key_n(key, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now()).as_millis().max(1) as u64),
            // More than a whole budget: a minute is the honest answer.
            Err(_) => Err(60_000),
        }
    }

    fn check<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
    ) -> Result<(), RetryAfterMs> {
        limiter.check_key(key).map_err(|not_until| not_until.wait_time_from(self.clock.now()).as_millis().max(1) as u64)
    }

    /// Forgets keys whose budget is full again; called periodically so the
    /// maps do not grow with every address ever seen.
    pub fn shrink(&self) {
        self.login_per_account.retain_recent();
        self.login_per_ip.retain_recent();
        self.register_per_ip.retain_recent();
        self.handshake_per_ip.retain_recent();
        self.email_lookups_per_user.retain_recent();
        self.email_lookups_per_ip.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_budget_is_per_account_and_reports_a_wait() {
        let l = Limits::new(2, 10, 20);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(l.check_login("a@x.io", ip).is_ok());
        assert!(l.check_login("a@x.io", ip).is_ok());
        let wait = l.check_login("a@x.io", ip).unwrap_err();
        assert!(wait > 0);
        assert!(l.check_login("b@x.io", ip).is_ok(), "another account has its own budget");
    }

    #[test]
    fn email_lookups_are_charged_per_address_asked_about() {
        let l = Limits::new(2, 10, 5);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(l.check_email_lookups("u", ip, 3).is_ok());
        assert!(l.check_email_lookups("u", ip, 2).is_ok());
        assert!(l.check_email_lookups("u", ip, 1).unwrap_err() > 0, "the user's budget is spent");
        assert!(l.check_email_lookups("v", ip, 5).is_ok(), "another user has their own");
        assert_eq!(l.check_email_lookups("w", ip, 6), Err(60_000), "more than a whole budget");
    }
}
