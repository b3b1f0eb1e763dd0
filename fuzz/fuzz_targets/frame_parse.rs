//! A client text frame (WebSocket text frames are UTF-8) through the
//! gateway's frame parser: see `chatgw_fuzz::check_frame`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        chatgw_fuzz::check_frame(text);
    }
});
