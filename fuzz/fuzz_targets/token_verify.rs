//! Any string as an access token against a real key set (HS256 current,
//! RS256 previous): never a panic, never an acceptance of a token the keys
//! did not sign. See `chatgw_fuzz::check_token`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chatgw_fuzz::check_token(&String::from_utf8_lossy(data));
});
