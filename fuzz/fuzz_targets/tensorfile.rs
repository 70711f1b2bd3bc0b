#![no_main]
//! Fuzz target `tensorfile`: see `wqat::fuzzing::tensorfile`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wqat::fuzzing::tensorfile(data);
});
