#![no_main]
//! Fuzz target `int8_model`: see `wqat::fuzzing::int8_model`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wqat::fuzzing::int8_model(data);
});
