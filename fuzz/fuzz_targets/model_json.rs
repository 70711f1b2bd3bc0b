#![no_main]
//! Fuzz target `model_json`: see `wqat::fuzzing::model_json`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wqat::fuzzing::model_json(data);
});
