#![no_main]
//! Fuzz target `idx_images`: see `wqat::fuzzing::idx_images`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wqat::fuzzing::idx_images(data);
});
