//! Fuzz target `plan_json`: A plan file in JSON through `orch_proto::plan::parse_plan` (validates).
//! The checks are in `orch_fuzz::targets` (fuzz/src/targets.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    orch_fuzz::targets::plan(orch_proto::plan::Format::Json, data);
});
