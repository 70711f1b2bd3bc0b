#![no_main]
//! Fuzz target `state_dict`: see `wqat::fuzzing::state_dict`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wqat::fuzzing::state_dict(data);
});
