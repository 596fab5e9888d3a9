//! The daemon config: `orchd --print-config` shows the layering flag > env > file > default,
//! and a bad config file is refused naming the key.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use crate::support::{TestDaemon, describe, run_deadline, stderr, stdout, utf8};

/// `orchd ARGS... --print-config` with `env`; asserts exit 0 and returns `max_parallel`.
///
/// Root's defaults are the system-service paths (`/etc/orch/orchd.toml`), outside the test's
/// control; so when the tests run as root, this runs `orchd` as `nobody` (uid 65534), whose
/// defaults are the user-service paths under the private XDG dirs.
fn printed_max_parallel(d: &TestDaemon, args: &[&str], env: &[(&str, &str)]) -> i64 {
    let mut cmd = d.orchd();
    if nix::unistd::Uid::effective().is_root() {
        std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o755))
            .expect("open the temp dir to nobody");
        cmd.uid(65534).gid(65534);
    }
    cmd.args(args)
        .arg("--print-config")
        .envs(env.iter().copied());
    let out = run_deadline(&mut cmd, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "orchd {args:?} --print-config (env {env:?})\n{}",
        describe(&out)
    );
    let config: toml::Table = toml::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("--print-config printed no TOML ({e})\n{}", describe(&out)));
    config
        .get("max_parallel")
        .and_then(toml::Value::as_integer)
        .unwrap_or_else(|| panic!("no integer max_parallel in\n{}", stdout(&out)))
}

#[test]
fn print_config_layers_flag_env_file_default() {
    let d = TestDaemon::prepare(&[], &[]);
    let file = d.write_file("orchd.toml", "max_parallel = 3\n");
    let file = utf8(&file);
    let other = d.write_file("other.toml", "max_parallel = 4\n");
    let other = utf8(&other);

    // Default: the number of CPUs (as the OS reports them online, or as this process may use).
    let default = printed_max_parallel(&d, &[], &[]);
    let usable = std::thread::available_parallelism().map_or(0, |n| n.get() as i64);
    // SAFETY: sysconf has no preconditions; it only reads a system value.
    let online = i64::from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as i32);
    assert!(
        default == usable || default == online,
        "default max_parallel {default} is not the number of CPUs ({usable} usable, {online} online)"
    );

    assert_eq!(
        printed_max_parallel(&d, &["--config", file], &[]),
        3,
        "file"
    );
    assert_eq!(
        printed_max_parallel(&d, &[], &[("ORCH_CONFIG", file)]),
        3,
        "ORCH_CONFIG"
    );
    assert_eq!(
        printed_max_parallel(&d, &["--config", other], &[("ORCH_CONFIG", file)]),
        4,
        "--config beats ORCH_CONFIG"
    );
    assert_eq!(
        printed_max_parallel(&d, &["--config", file], &[("ORCH_MAX_PARALLEL", "5")]),
        5,
        "env beats file"
    );
    assert_eq!(
        printed_max_parallel(
            &d,
            &["--config", file, "--max-parallel", "7"],
            &[("ORCH_MAX_PARALLEL", "5")]
        ),
        7,
        "flag beats env"
    );
}

#[test]
fn print_config_reads_the_default_config_location() {
    let d = TestDaemon::prepare(&[], &[]);
    // `orchd()` points XDG_CONFIG_HOME at the private xdg-config dir.
    let dir = d.dir().join("xdg-config").join("orch");
    std::fs::create_dir_all(&dir).expect("create the config dir");
    std::fs::write(dir.join("orchd.toml"), "max_parallel = 6\n").expect("write the config");
    assert_eq!(printed_max_parallel(&d, &[], &[]), 6);
}

#[test]
fn bad_config_is_refused_naming_the_key() {
    let d = TestDaemon::prepare(&[], &[]);
    for (name, text, key) in [
        ("unknown-key.toml", "max_paralel = 2\n", "max_paralel"),
        (
            "bad-value.toml",
            "max_parallel = \"lots\"\n",
            "max_parallel",
        ),
        (
            "bad-retention.toml",
            "retention = \"forever\"\n",
            "retention",
        ),
        (
            "bad-section-key.toml",
            "[logs]\nmax_atempt_bytes = 5\n",
            "max_atempt_bytes",
        ),
    ] {
        let path = d.write_file(name, text);
        let out = d.print_config(&path);
        assert!(
            !out.status.success(),
            "{name} was accepted\n{}",
            describe(&out)
        );
        assert!(
            stderr(&out).contains(key),
            "{name}: the message does not name `{key}`\n{}",
            describe(&out)
        );
    }

    // Starting (not just printing) with a bad config fails too, before serving.
    let path = d.write_file("start.toml", "max_paralel = 2\n");
    let mut cmd = d.orchd_at(d.socket(), d.state_dir());
    cmd.arg("--config").arg(&path);
    let out = run_deadline(&mut cmd, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("orchd started with a bad config\n{e}"));
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(stderr(&out).contains("max_paralel"), "{}", describe(&out));
    assert!(
        !d.socket().exists(),
        "orchd with a bad config left a socket"
    );
}
