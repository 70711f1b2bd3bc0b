#![no_main]
//! Fuzz target `idx_labels`: see `wqat::fuzzing::idx_labels`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wqat::fuzzing::idx_labels(data);
});
