//! libFuzzer target: see `usage_fuzz::priced_feed` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| usage_fuzz::priced_feed(data));
