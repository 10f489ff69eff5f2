//! libFuzzer target: see `usage_fuzz::usage_confluent` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| usage_fuzz::usage_confluent(data));
