//! The configuration's unit tests: defaults, opt-in sections, and that a
//! bad value names its variable without echoing it.

use super::*;

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn the_demo_is_on_in_development_off_in_production_and_switchable() {
    let secret = ("JWT_SECRET", "0123456789abcdef0123456789abcdef-long-enough");
    let demo = |pairs: &[(&str, &str)]| Config::from_vars(&vars(pairs)).map(|c| c.demo);
    assert_eq!(demo(&[]).unwrap(), Some(DemoConfig::Embedded));
    assert_eq!(demo(&[("DEMO", "0")]).unwrap(), None);
    assert_eq!(demo(&[("APP_ENV", "production"), secret]).unwrap(), None);
    assert_eq!(demo(&[("APP_ENV", "production"), secret, ("DEMO", "1")]).unwrap(), Some(DemoConfig::Embedded));
    assert_eq!(demo(&[("DEMO", "yes")]).err().map(|e| e.var), Some("DEMO"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    assert_eq!(demo(&[("DEMO_DIR", path)]).err().map(|e| e.var), Some("DEMO_DIR"));
    std::fs::write(dir.path().join("index.html"), "<!doctype html>").unwrap();
    assert_eq!(demo(&[("DEMO_DIR", path)]).unwrap(), Some(DemoConfig::Dir(dir.path().to_owned())));
    assert_eq!(demo(&[("DEMO_DIR", path), ("DEMO", "0")]).unwrap(), None);
}

#[test]
fn the_tail_check_defaults_to_two_seconds_turns_off_with_zero_and_is_bounded() {
    let tail = |v: &str| Config::from_vars(&vars(&[("BUS_TAIL_CHECK_MS", v)])).map(|c| c.ws.tail_check);
    assert_eq!(Config::from_vars(&vars(&[])).unwrap().ws.tail_check, Some(Duration::from_secs(2)));
    assert_eq!(tail("0").unwrap(), None);
    assert_eq!(tail("300").unwrap(), Some(Duration::from_millis(300)));
    for bad in ["49", "600001", "soon"] {
        assert_eq!(tail(bad).err().unwrap().var, "BUS_TAIL_CHECK_MS", "{bad}");
    }
}

#[test]
fn development_defaults_start_without_any_variable() {
    let c = Config::from_vars(&vars(&[])).expect("defaults are valid");
    assert_eq!(c.environment, Environment::Development);
    assert_eq!(c.listen_addr.to_string(), "127.0.0.1:8080");
    assert!(c.is_sqlite());
}

#[test]
fn production_refuses_missing_short_and_well_known_secrets() {
    let prod = |s: Option<&str>| {
        let mut v = vars(&[("APP_ENV", "production")]);
        if let Some(s) = s {
            v.insert("JWT_SECRET".into(), s.into());
        }
        Config::from_vars(&v)
    };
    assert_eq!(prod(None).err().unwrap().var, "JWT_SECRET");
    assert_eq!(prod(Some("tooshort")).err().unwrap().var, "JWT_SECRET");
    assert_eq!(prod(Some("your-256-bit-secret-your-256-bit-secret")).err().unwrap().var, "JWT_SECRET");
    assert_eq!(prod(Some(&"a".repeat(40))).err().unwrap().var, "JWT_SECRET");
    assert!(prod(Some("q8Jm2vXr7pL0sT4wZ9yB3nC6dF1gH5kA")).is_ok());
}

#[test]
fn sentry_is_opt_in_and_its_environment_defaults_to_app_env() {
    assert!(Config::from_vars(&vars(&[])).unwrap().sentry.is_none());
    let c = Config::from_vars(&vars(&[("SENTRY_DSN", "https://abc123@o1.ingest.example.com/42")])).unwrap();
    let s = c.sentry.expect("enabled by SENTRY_DSN");
    assert_eq!((s.environment.as_str(), s.sample_rate), ("development", 1.0));
    let c = Config::from_vars(&vars(&[
        ("APP_ENV", "prod"),
        ("JWT_SECRET", "q8Jm2vXr7pL0sT4wZ9yB3nC6dF1gH5kA"),
        ("SENTRY_DSN", "http://public@127.0.0.1:9/1"),
        ("SENTRY_SAMPLE_RATE", "0.25"),
    ]))
    .unwrap();
    let s = c.sentry.unwrap();
    assert_eq!((s.environment.as_str(), s.sample_rate), ("production", 0.25));
    let c = Config::from_vars(&vars(&[("SENTRY_DSN", "http://k@h/1"), ("SENTRY_ENVIRONMENT", "staging-eu")]));
    assert_eq!(c.unwrap().sentry.unwrap().environment, "staging-eu");
}

#[test]
fn a_webhook_url_needs_its_secret() {
    assert!(Config::from_vars(&vars(&[])).unwrap().webhook.is_none());
    let e = Config::from_vars(&vars(&[("WEBHOOK_URL", "https://push.example.com/hook")])).err().unwrap();
    assert_eq!(e.var, "WEBHOOK_SECRET");
    let c = Config::from_vars(&vars(&[
        ("WEBHOOK_URL", "https://push.example.com/hook"),
        ("WEBHOOK_SECRET", "whsec-0123456789"),
        ("WEBHOOK_INCLUDE_BODY", "1"),
    ]))
    .unwrap();
    let w = c.webhook.expect("enabled by WEBHOOK_URL");
    assert!(w.include_body);
    assert_eq!((w.max_attempts, w.batch_size), (12, 100));
}

#[test]
fn bad_values_name_their_variable() {
    for (k, v) in [
        ("LISTEN_ADDR", "nope"),
        ("METRICS_ADDR", "1.2.3"),
        ("DATABASE_URL", "mysql://x"),
        ("REDIS_URL", "http://x"),
        ("ALLOWED_ORIGINS", "example.com"),
        ("ACCESS_TOKEN_TTL_SECS", "-1"),
        ("ACCESS_TOKEN_TTL_SECS", "1"),
        ("JWT_ALGORITHM", "none"),
        ("APP_ENV", "staging"),
        ("SENTRY_DSN", "not-a-dsn"),
        ("SENTRY_DSN", "ftp://key@host/1"),
        ("SENTRY_SAMPLE_RATE", "1.5"),
        ("SENTRY_SAMPLE_RATE", "often"),
        ("SENTRY_ENVIRONMENT", "prod/eu"),
        ("TRUSTED_PROXIES", "10.0.0.0/8,nope"),
        ("TRUSTED_PROXIES", "10.0.0.0/40"),
        ("TRUSTED_PROXY_HEADER", "x-real-ip"),
        ("AUDIT_RETENTION_DAYS", "-3"),
        ("WEBHOOK_URL", "ftp://push.example.com/"),
        ("WEBHOOK_INCLUDE_BODY", "yes"),
        ("WEBHOOK_LEASE_MS", "1000"),
    ] {
        let e = Config::from_vars(&vars(&[(k, v)])).err().unwrap_or_else(|| panic!("{k}={v} accepted"));
        assert_eq!(e.var, k);
        assert!(!e.to_string().contains(v) || v.len() < 3, "error echoes the value");
    }
}
