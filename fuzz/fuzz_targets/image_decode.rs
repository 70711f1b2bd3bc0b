#![no_main]
//! Fuzz target `image_decode`: see `wqat::fuzzing::image_decode`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wqat::fuzzing::image_decode(data);
});
