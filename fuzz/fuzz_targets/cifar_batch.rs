#![no_main]
//! Fuzz target `cifar_batch`: see `wqat::fuzzing::cifar_batch`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wqat::fuzzing::cifar_batch(data);
});
