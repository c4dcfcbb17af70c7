#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| raftkv::fuzzing::etcd_snapshot(data));
