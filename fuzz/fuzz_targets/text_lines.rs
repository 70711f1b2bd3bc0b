#![no_main]
//! Fuzz target `text_lines`: see `wqat::fuzzing::text_lines`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wqat::fuzzing::text_lines(data);
});
