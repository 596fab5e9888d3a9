//! Fuzz target `agent_output`: An agent's stdout through the daemon's `LineParser` (each usage format) and `parse_protocol_line`.
//! The checks are in `orch_fuzz::targets` (fuzz/src/targets.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    orch_fuzz::targets::agent_output(data);
});
