//! cargo-fuzz wrapper: the body is `shadowmesh_fuzzing::targets::dht_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shadowmesh_fuzzing::targets::dht_message(data));
