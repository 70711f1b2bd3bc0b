#![no_main]
//! Fuzz target `digits_csv`: see `wqat::fuzzing::digits_csv`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wqat::fuzzing::digits_csv(data);
});
