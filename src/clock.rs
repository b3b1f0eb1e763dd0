//! Wall-clock time as the schema and the protocol write it.

/// Milliseconds since the Unix epoch: the one time format of the schema.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
