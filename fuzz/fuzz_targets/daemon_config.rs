//! Fuzz target `daemon_config`: `orchd.toml` through the daemon's `config::parse`, `to_toml` and `layer`.
//! The checks are in `orch_fuzz::targets` (fuzz/src/targets.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    orch_fuzz::targets::daemon_config(data);
});
