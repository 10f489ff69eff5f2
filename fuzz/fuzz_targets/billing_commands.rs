//! libFuzzer target: see `usage_fuzz::billing_commands` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| usage_fuzz::billing_commands(data));
