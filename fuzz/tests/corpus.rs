//! Replays the committed corpus (fuzz/corpus/<target>/) through each target, without
//! libFuzzer: `cargo test --manifest-path fuzz/Cargo.toml`.

use std::path::Path;

use orch_fuzz::targets::{agent_output, daemon_config, plan, submit_spec};
use orch_proto::plan::{Format, parse_plan};
use orch_proto::v1 as pb;
use prost::Message;

fn replay(target: &str, f: impl Fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        f(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
}

#[test]
fn corpus_plan_toml() {
    replay("plan_toml", |d| plan(Format::Toml, d));
}

#[test]
fn corpus_plan_yaml() {
    replay("plan_yaml", |d| plan(Format::Yaml, d));
}

#[test]
fn corpus_plan_json() {
    replay("plan_json", |d| plan(Format::Json, d));
}

#[test]
fn corpus_daemon_config() {
    replay("daemon_config", daemon_config);
}

#[test]
fn corpus_agent_output() {
    replay("agent_output", agent_output);
}

#[test]
fn corpus_submit_spec() {
    replay("submit_spec", submit_spec);
}

/// `ORCH_FUZZ_WRITE_SEEDS=1 cargo test --manifest-path fuzz/Cargo.toml` rewrites the
/// `submit_spec` seeds: every plan seed that parses, as a dry-run `SubmitRequest` from an
/// absolute, a relative and an empty client workdir.
#[test]
fn write_submit_spec_seeds() {
    if std::env::var_os("ORCH_FUZZ_WRITE_SEEDS").is_none() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let out = root.join("submit_spec");
    std::fs::create_dir_all(&out).unwrap();
    for (dir, format) in [
        ("plan_toml", Format::Toml),
        ("plan_yaml", Format::Yaml),
        ("plan_json", Format::Json),
    ] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            let Ok(spec) = parse_plan(&text, format, "seed", "seed") else {
                continue;
            };
            let stem = path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .replace('.', "-");
            for (tag, workdir) in [("abs", "/home/u/project"), ("rel", "project"), ("cwd", "")] {
                let req = pb::SubmitRequest {
                    spec: Some(spec.clone()),
                    dry_run: true,
                    request_id: format!("seed-{stem}"),
                    workdir: workdir.into(),
                    env: [("PATH", "/usr/bin:/bin"), ("HOME", "/home/u")]
                        .into_iter()
                        .map(|(k, v)| (k.into(), v.into()))
                        .collect(),
                    ..Default::default()
                };
                std::fs::write(out.join(format!("{stem}-{tag}")), req.encode_to_vec()).unwrap();
            }
        }
    }
}
