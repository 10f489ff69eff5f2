//! libFuzzer target: see `usage_fuzz::changelog_state` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| usage_fuzz::changelog_state(data));
