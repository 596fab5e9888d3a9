//! Fuzz target `plan_toml`: A plan file in TOML through `orch_proto::plan::parse_plan` (validates).
//! The checks are in `orch_fuzz::targets` (fuzz/src/targets.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    orch_fuzz::targets::plan(orch_proto::plan::Format::Toml, data);
});
