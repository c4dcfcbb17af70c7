#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| raftkv::fuzzing::gateway_json(data));
