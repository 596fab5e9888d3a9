//! Fuzz target `submit_spec`: A protobuf `SubmitRequest` through `convert::objective_input` and `plans::resolve`.
//! The checks are in `orch_fuzz::targets` (fuzz/src/targets.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    orch_fuzz::targets::submit_spec(data);
});
