//! Any bytes as a bus envelope (what another instance, or anything else
//! that can publish on Redis, sends): see `chatgw_fuzz::check_envelope`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chatgw_fuzz::check_envelope(data);
});
