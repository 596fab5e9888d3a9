//! Unit tests of the daemon config (`config/`).
use super::*;

#[test]
fn empty_file_is_defaults() {
    let c = parse("", "t.toml").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.retry_policy(), RetryPolicy::default());
}

#[test]
fn full_example() {
    let c = parse(
        r#"
max_parallel = 3
retention = "7d"
grace_period = "2s"
[defaults]
timeout = "20m"
retry = { max_attempts = 5, initial_backoff = "1s" }
limits = { memory = "2G", pids = 256 }
[budget]
daily_usd = 10.0
[logs]
max_attempt_bytes = "64M"
[prices.gpt-5]
input_per_mtok = 1.25
output_per_mtok = 10.0
[agents.claude]
command = ["claude", "-p", "{prompt}"]
usage = "claude-stream-json"
"#,
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.max_parallel(), 3);
    assert_eq!(c.retention.0, 7 * 86_400_000);
    assert_eq!(c.retry_policy().max_attempts, 5);
    assert_eq!(c.retry_policy().initial_backoff_ms, 1000);
    assert_eq!(c.limits().memory_bytes, Some(2 << 30));
    assert_eq!(c.logs.max_attempt_bytes.0, 64 << 20);
    assert_eq!(c.agents["claude"].usage, "claude-stream-json");
}

#[test]
fn user_limits_layer_the_user_over_the_defaults_and_never_exceed_max_parallel() {
    let c = parse(
        r#"
max_parallel = 4
max_parallel_per_user = 2
[budget]
daily_usd = 10.0
machine_daily_usd = 50.0
[users.alice]
daily_usd = 20.0
max_parallel = 9
[users.1001]
monthly_usd = 5.0
"#,
        "t.toml",
    )
    .unwrap();
    let alice = c.user_limits(1000, Some("alice"));
    assert_eq!(alice.daily_usd, Some(20.0));
    assert_eq!(alice.max_parallel, 4, "capped by max_parallel");
    let by_uid = c.user_limits(1001, Some("bob"));
    assert_eq!(
        (by_uid.daily_usd, by_uid.monthly_usd),
        (Some(10.0), Some(5.0))
    );
    assert_eq!(by_uid.max_parallel, 2);
    let other = c.user_limits(1002, None);
    assert_eq!((other.daily_usd, other.max_parallel), (Some(10.0), 2));
    assert_eq!(
        Config::default().user_limits(5, None).max_parallel,
        Config::default().max_parallel()
    );
}

#[test]
fn cached_tokens_are_priced_at_their_own_rate_or_else_as_input() {
    let c = parse(
        "[prices.m]\ninput_per_mtok = 2.0\noutput_per_mtok = 10.0\ncached_input_per_mtok = 0.2\n",
        "t.toml",
    )
    .unwrap();
    let u = crate::model::Usage {
        input_tokens: 1_000_000,
        cache_read_tokens: 1_000_000,
        cache_write_tokens: 1_000_000,
        output_tokens: 1_000_000,
        cost_usd: 0.0,
    };
    let cost = c.prices["m"].cost(&u);
    assert!((cost - (2.0 + 0.2 + 2.0 + 10.0)).abs() < 1e-9, "{cost}");
    let e = parse(
        "[prices.m]\ninput_per_mtok = -1.0\noutput_per_mtok = 1.0\n",
        "t.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("prices.m.input_per_mtok"), "{e}");
}

#[test]
fn a_profile_takes_its_prompt_one_way() {
    use crate::model::PromptMode;
    let c = parse(
        "[agents.a]\ncommand = [\"x\", \"{prompt}\"]\n[agents.b]\ncommand = [\"x\"]\n[agents.c]\ncommand = [\"x\", \"--file={prompt_file}\"]\n[agents.d]\ncommand = [\"x\", \"{prompt}\"]\nprompt = \"stdin\"\n",
        "t.toml",
    )
    .unwrap();
    let mode = |n: &str| c.agents[n].prompt_mode();
    assert_eq!(
        [mode("a"), mode("b"), mode("c"), mode("d")],
        [
            PromptMode::Argv,
            PromptMode::Stdin,
            PromptMode::File,
            PromptMode::Stdin
        ]
    );
    let e = parse(
        "[agents.a]\ncommand = [\"x\"]\nprompt = \"pipe\"\n",
        "t.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("agents.a.prompt") && e.contains("stdin, argv, file"),
        "{e}"
    );
}

#[test]
fn user_limits_are_checked() {
    for (text, key) in [
        ("[users.bob]\nmax_parallel = 0", "users.bob.max_parallel"),
        ("[users.bob]\ndaily_usd = -1.0", "users.bob.daily_usd"),
        (
            "[budget]\nmachine_daily_usd = nan",
            "budget.machine_daily_usd",
        ),
        ("max_parallel_per_user = 0", "max_parallel_per_user"),
        ("[users.bob]\nweekly_usd = 1.0", "weekly_usd"),
    ] {
        let e = parse(text, "t.toml").unwrap_err().to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
}

#[test]
fn errors_name_the_key() {
    let e = parse("max_paralel = 2", "t.toml").unwrap_err().to_string();
    assert!(e.contains("t.toml") && e.contains("max_paralel"), "{e}");
    let e = parse("[defaults]\ntimeout = \"soon\"", "t.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("defaults.timeout") && e.contains("bad duration"),
        "{e}"
    );
    let e = parse("limits_backend = \"docker\"", "t.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("limits_backend"), "{e}");
    let e = parse("[agents.x]\ncommand = []", "t.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("agents.x.command"), "{e}");
    let e = parse("[agents.x]\ncommand = [\"x\"]\nusage = \"magic\"", "t.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("agents.x.usage"), "{e}");
    let e = parse("max_parallel = 0", "t.toml").unwrap_err().to_string();
    assert!(e.contains("max_parallel"), "{e}");
}

#[test]
fn numbers_too_large_to_mean_anything_are_refused() {
    for (text, key) in [
        ("retention = \"1000000000d\"", "retention"),
        ("grace_period = \"1000d\"", "grace_period"),
        ("[defaults]\ntimeout = \"1000d\"", "defaults.timeout"),
        (
            "[defaults]\nidle_timeout = \"1000d\"",
            "defaults.idle_timeout",
        ),
        (
            "[defaults.retry]\nmax_backoff = \"1000d\"",
            "defaults.retry.max_backoff",
        ),
        (
            "[defaults.retry]\nmultiplier = 1e308",
            "defaults.retry.multiplier",
        ),
        (
            "[defaults.limits]\nmemory = \"1000000T\"",
            "defaults.limits.memory",
        ),
        (
            "[defaults.limits]\npids = 9223372036854775807",
            "defaults.limits.pids",
        ),
        (
            "[defaults.limits]\ncpu_quota = inf",
            "defaults.limits.cpu_quota",
        ),
        (
            "[agents.x]\ncommand = [\"x\"]\ntimeout = \"1000d\"",
            "agents.x.timeout",
        ),
        (
            "[agents.x]\ncommand = [\"x\"]\nlimits = { cpu_seconds = 9223372036854775807 }",
            "agents.x.limits.cpu_seconds",
        ),
        (
            "[prices.m]\ninput_per_mtok = nan\noutput_per_mtok = 1.0",
            "prices.m.input_per_mtok",
        ),
        ("[budget]\ndaily_usd = inf", "budget.daily_usd"),
        ("[budget]\nmonthly_usd = -1.0", "budget.monthly_usd"),
    ] {
        let e = parse(text, "t.toml").unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("config t.toml: {key}: ")),
            "{text}: {e}"
        );
    }
}

#[test]
fn a_deeply_nested_config_is_refused_at_once() {
    let text = format!("a = {}", "[".repeat(1_000_000));
    let e = parse(&text, "t.toml").unwrap_err().to_string();
    assert!(
        e.contains("nesting deeper than the limit of 32 levels"),
        "{e}"
    );
}

#[test]
fn flags_beat_file() {
    let c = parse("max_parallel = 3\ngrace_period = \"5s\"", "t.toml").unwrap();
    let c = c
        .layer(&Overrides {
            max_parallel: Some(7),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(c.max_parallel(), 7);
    assert_eq!(c.grace_period.0, 5000);
    assert!(c.agents.contains_key("shell"));
    let again = parse(&c.to_toml(), "printed").unwrap();
    assert_eq!(again.max_parallel(), 7);
}

#[test]
fn host_admission_keys_parse_and_bad_ones_are_named() {
    let cfg = parse(
        "[host]\nmin_available_memory = \"1G\"\nmax_load = 6.5\n",
        "t.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.host.min_available_memory, Some(Size(1 << 30)));
    assert_eq!(cfg.host.max_load, Some(6.5));
    // Unset: no rule, and none printed.
    let plain = parse("", "t.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plain.host, HostConfig::default());
    assert!(!plain.to_toml().contains("min_available_memory"));
    for (text, key) in [
        ("[host]\nmax_load = 0\n", "host.max_load"),
        ("[host]\nmax_load = -2.0\n", "host.max_load"),
        (
            "[host]\nmin_available_memory = \"lots\"\n",
            "host.min_available_memory",
        ),
        ("[host]\nmin_free = 1\n", "min_free"),
    ] {
        let e = parse(text, "t.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(key), "{text}: {e}");
    }
}

#[test]
fn executors_slurm_is_read_and_checked() {
    let c = parse(
        r#"
[executors.slurm]
partition = "gpu"
account = "lab"
qos = "normal"
sbatch_args = ["--gres=gpu:1"]
output_dir = "/shared/orch"
sbatch = "/opt/slurm/bin/sbatch"
poll_max = "10s"
"#,
        "t.toml",
    )
    .unwrap();
    let s = c.executors.slurm.expect("slurm");
    assert_eq!(s.partition.as_deref(), Some("gpu"));
    assert_eq!(s.sbatch_args, ["--gres=gpu:1"]);
    assert_eq!(s.sbatch, PathBuf::from("/opt/slurm/bin/sbatch"));
    assert_eq!(s.scancel, PathBuf::from("scancel"));
    assert_eq!(s.poll_max.0, 10_000);
    let e = parse("[executors.slurm]\npartition = \"x\"\n", "t.toml").unwrap_err();
    assert!(
        e.to_string()
            .contains("executors.slurm.output_dir: must be set"),
        "{e}"
    );
    let e = parse(
        "[executors.slurm]\noutput_dir = \"/s\"\nparition = \"x\"\n",
        "t.toml",
    )
    .unwrap_err();
    assert!(e.to_string().contains("parition"), "{e}");
}

#[test]
fn routing_keeps_the_files_profile_order_and_checks_its_settings() {
    let c = parse(
        "[agents.zeta]\ncommand = [\"z\"]\ntags = [\"code\"]\nquality = 10\n\
         [agents.alpha]\ncommand = [\"a\"]\nquality = 1\n\
         [routing]\nwindow = 5\ncooldown_after = 2\ncooldown = \"1m\"\n",
        "t.toml",
    )
    .unwrap();
    let names: Vec<&str> = c.agents_in_order().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["zeta", "alpha"]);
    // The printed config (`--print-config`, `daemon config`) keeps the order.
    let again = parse(&c.to_toml(), "printed").unwrap();
    assert_eq!(again, c);
    assert_eq!(again.agent_order, ["zeta", "alpha"]);
    assert_eq!(c.routing.window, 5);
    assert_eq!(c.routing.cooldown.0, 60_000);
    assert_eq!(c.routing.budget_alert_percent, 80.0);
    for (text, says) in [
        (
            "[agents.x]\ncommand = [\"x\"]\nquality = 0\n",
            "agents.x.quality: must be from 1 to 10, got 0",
        ),
        (
            "[routing]\nwindow = 0\n",
            "routing.window: must be from 1 to 100, got 0",
        ),
        (
            "[routing]\nbudget_alert_percent = -1.0\n",
            "routing.budget_alert_percent: must be a positive number",
        ),
        (
            "[agents.auto]\ncommand = [\"x\"]\n",
            "agents.auto: `auto` is reserved",
        ),
        ("[routing]\nwindw = 3\n", "windw"),
    ] {
        let e = parse(text, "t.toml").unwrap_err().to_string();
        assert!(e.contains(says), "{text}: {e}");
    }
}
