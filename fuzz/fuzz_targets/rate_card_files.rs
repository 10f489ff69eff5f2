//! libFuzzer target: see `usage_fuzz::rate_card_files` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| usage_fuzz::rate_card_files(data));
