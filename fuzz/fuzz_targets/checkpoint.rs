#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| balora_fuzz::checkpoint(data));
