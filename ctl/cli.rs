//! The command line of `orchctl` (clap derive): global flags, commands and their options.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};
use clap_complete::engine::{ArgValueCandidates, ArgValueCompleter};
use orch_proto::units::{parse_duration_ms, parse_size};

use crate::complete;
use crate::output::Format;

/// Command-line client of orchd, the supervisor daemon for AI agents.
#[derive(Debug, Parser)]
#[command(
    name = "orchctl",
    version,
    propagate_version = true,
    max_term_width = 100
)]
#[command(
    after_help = "Ids: a unique prefix of an objective id (4+ characters) works wherever an id \
is taken, and `last` (or `-`) means your newest objective.\n\
Exit codes: 0 ok, 1 the thing asked for failed or the daemon refused, \
2 invalid input, 3 the daemon cannot be reached."
)]
pub struct Cli {
    /// The daemon's socket [default: $ORCH_SOCKET, else $XDG_RUNTIME_DIR/orch/orchd.sock, or /run/orch/orchd.sock for root]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Output format
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,

    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a plan file, a command (after `--`), or an agent prompt
    #[command(after_help = "Examples:\n  \
  orchctl submit plan.toml\n  \
  id=$(orchctl submit --retries 2 --timeout 10m -- ./run-tests.sh)\n  \
  orchctl submit --agent claude --prompt 'fix the flaky test' --wait")]
    Submit(Box<SubmitArgs>),
    /// Show an objective, its steps and attempts
    #[command(after_help = "Examples:\n  orchctl status 01JD\n  orchctl status last -o json")]
    Status {
        /// Objective id: a unique prefix (4+ characters) or `last`
        #[arg(add = ArgValueCompleter::new(complete::ids))]
        id: String,
    },
    /// Show the changes of worktree steps against their base
    #[command(
        after_help = "Examples:\n  orchctl diff 01JD\n  orchctl diff last fix-tests -- --stat"
    )]
    Diff {
        /// Objective id: a unique prefix (4+ characters) or `last`
        #[arg(add = ArgValueCompleter::new(complete::ids))]
        id: String,
        /// Only this step (default: every worktree step that has a branch)
        step: Option<String>,
        /// Extra arguments for `git diff` (after `--`), e.g. `--stat`
        #[arg(last = true)]
        git_args: Vec<String>,
    },
    /// List objectives, newest first
    #[command(
        after_help = "Examples:\n  orchctl list --state running\n  orchctl list --limit 5 -o json"
    )]
    List {
        /// Only objectives in this state (pending, running, paused, awaiting_approval, succeeded, failed, cancelled)
        #[arg(long, value_name = "STATE", add = ArgValueCandidates::new(complete::objective_states))]
        state: Option<String>,
        /// At most this many
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Stream events: of one objective until it ends (exit 0 iff it succeeded), or of all, live
    #[command(
        after_help = "Examples:\n  orchctl watch last\n  orchctl watch --from 0 --kinds attempt_ended -o json"
    )]
    Watch(WatchArgs),
    /// Print the captured stdout/stderr of attempts
    #[command(
        after_help = "Examples:\n  orchctl logs 01JD\n  orchctl logs last build --stderr --tail 20\n  orchctl logs 01JD build -f -o json"
    )]
    Logs(LogsArgs),
    /// Cancel an objective
    #[command(after_help = "Example:\n  orchctl cancel 01JD")]
    Cancel {
        /// Objective id: a unique prefix (4+ characters) or `last`
        #[arg(add = ArgValueCompleter::new(complete::ids))]
        id: String,
    },
    /// Pause an objective (its running agents are stopped in place)
    #[command(after_help = "Example:\n  orchctl pause last")]
    Pause {
        /// Objective id: a unique prefix (4+ characters) or `last`
        #[arg(add = ArgValueCompleter::new(complete::ids))]
        id: String,
    },
    /// Resume a paused objective
    #[command(after_help = "Example:\n  orchctl resume last")]
    Resume {
        /// Objective id: a unique prefix (4+ characters) or `last`
        #[arg(add = ArgValueCompleter::new(complete::ids))]
        id: String,
    },
    /// Re-run the failed steps of an ended objective (and their dependents)
    #[command(after_help = "Examples:\n  orchctl retry 01JD\n  orchctl retry 01JD build --fresh")]
    Retry {
        /// Objective id: a unique prefix (4+ characters) or `last`
        #[arg(add = ArgValueCompleter::new(complete::ids))]
        id: String,
        /// Only this step (default: every failed or cancelled step)
        step: Option<String>,
        /// Start the agents' sessions afresh instead of resuming their conversations
        #[arg(long)]
        fresh: bool,
    },
    /// Approve a step that waits for approval
    #[command(after_help = "Example:\n  orchctl approve 01JD deploy")]
    Approve {
        /// Objective id: a unique prefix (4+ characters) or `last`
        #[arg(add = ArgValueCompleter::new(complete::ids))]
        id: String,
        /// Step id
        step: String,
    },
    /// Deny a step that waits for approval
    #[command(after_help = "Example:\n  orchctl deny 01JD deploy --reason 'not on a Friday'")]
    Deny {
        /// Objective id: a unique prefix (4+ characters) or `last`
        #[arg(add = ArgValueCompleter::new(complete::ids))]
        id: String,
        /// Step id
        step: String,
        /// Why (recorded in the events and the audit trail)
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// List the agent profiles the daemon knows (and whether routing may choose them), or
    /// disable / enable one
    #[command(after_help = "Examples:\n  \
  orchctl agents\n  \
  orchctl agents -o json\n  \
  orchctl agents disable claude --for 2h --reason 'provider outage'\n  \
  orchctl agents enable claude")]
    Agents {
        #[command(subcommand)]
        action: Option<AgentsAction>,
    },
    /// Tokens and cost of one objective, or in total, with budget use; or broken down with --by
    #[command(after_help = "Examples:\n  \
  orchctl usage\n  \
  orchctl usage last\n  \
  orchctl usage --by day --since 7d\n  \
  orchctl usage --by model -o json")]
    Usage {
        /// Objective id or prefix, or `last` (default: totals over every objective)
        #[arg(add = ArgValueCompleter::new(complete::ids))]
        id: Option<String>,
        /// Break the cost down by day, agent, model or objective
        #[arg(long, value_enum, value_name = "WHAT", conflicts_with = "id")]
        by: Option<UsageBy>,
        /// With --by: only usage of the last DUR (e.g. 24h, 7d) [default: 30d]
        #[arg(long, value_name = "DUR", value_parser = positive_duration, requires = "by")]
        since: Option<u64>,
    },
    /// Who did what through the control plane
    #[command(
        after_help = "Examples:\n  orchctl audit --limit 20\n  orchctl audit --objective 01JD -o json"
    )]
    Audit {
        /// At most this many entries
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Only entries about this objective
        #[arg(long, value_name = "ID", add = ArgValueCompleter::new(complete::ids))]
        objective: Option<String>,
    },
    /// Inspect or reload the daemon
    #[command(
        subcommand,
        after_help = "Examples:\n  orchctl daemon status\n  orchctl daemon reload"
    )]
    Daemon(DaemonCommand),
    /// Print a shell completion script (works without a daemon); it completes commands,
    /// flags, objective ids and state names
    #[command(after_help = "Examples:\n  \
  source <(orchctl completions bash)\n  \
  orchctl completions zsh > \"${fpath[1]}/_orchctl\"\n  \
  orchctl completions fish > ~/.config/fish/completions/orchctl.fish")]
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Check this machine for orch: cgroup v2, socket and state directory, journald,
    /// lingering, agent CLIs, config; says how to fix each and exits 1 when something is broken
    #[command(after_help = "Examples:\n  orchctl doctor\n  orchctl doctor -o json")]
    Doctor,
    /// Per agent profile: runs, success rate, p50/p95 duration, retries, cost per success
    #[command(after_help = "Examples:\n  orchctl stats\n  orchctl stats -o json")]
    Stats,
    /// Full-screen live dashboard of objectives, steps and the daemon (q quits, ? for keys)
    #[command(
        after_help = "Keys: arrows/j/k move, Enter or d details, l logs, c cancel, \
p pause/resume, a approve, x deny, r refresh, q quit.\n\nExamples:\n  orchctl top\n  orchctl top --all"
    )]
    Top(TopArgs),
    /// Remove ended objectives: their records, events, logs and checkpoints (audited)
    #[command(after_help = "Examples:\n  orchctl rm 01JD 01JE\n  orchctl rm last")]
    Rm {
        /// Objective ids (unique prefixes of 4+ characters, or `last`)
        #[arg(required = true, value_name = "ID", add = ArgValueCompleter::new(complete::ids))]
        ids: Vec<String>,
    },
    /// Remove your ended objectives (root: everyone's), optionally only old ones or in one state
    #[command(
        after_help = "Examples:\n  orchctl prune\n  orchctl prune --older-than 7d --state succeeded"
    )]
    Prune {
        /// Only objectives that ended at least this long ago (e.g. 12h, 7d)
        #[arg(long, value_name = "DUR", value_parser = parse_duration_ms)]
        older_than: Option<u64>,
        /// Only objectives in this state (succeeded, failed or cancelled)
        #[arg(long, value_name = "STATE", add = ArgValueCandidates::new(complete::ended_states))]
        state: Option<String>,
    },
    /// Serve the Model Context Protocol (stdio, or Streamable HTTP with --http) as the calling user
    #[command(after_help = "Examples:\n  \
  claude mcp add orch -- orchctl mcp\n  \
  orchctl mcp --http 127.0.0.1:8765 --token-file ~/.config/orch/mcp-token")]
    Mcp(McpArgs),
    /// List the tools of the MCP servers the daemon's agent profiles are given (all, or one agent's)
    #[command(
        after_help = "Examples:\n  orchctl tools\n  orchctl tools claude --timeout 5s -o json"
    )]
    Tools(ToolsArgs),
}

/// `orchctl usage --by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UsageBy {
    Day,
    Agent,
    Model,
    Objective,
}

impl UsageBy {
    pub fn word(self) -> &'static str {
        match self {
            UsageBy::Day => "day",
            UsageBy::Agent => "agent",
            UsageBy::Model => "model",
            UsageBy::Objective => "objective",
        }
    }
}

/// `orchctl top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Also show objectives that ended (default: only those that have not, plus the last few ended)
    #[arg(long)]
    pub all: bool,
}

/// `orchctl mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    /// Serve Streamable HTTP on this loopback address (e.g. 127.0.0.1:8765; port 0 picks one) instead of stdio
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,

    /// The bearer token clients must send over HTTP, read from this file [default: a new
    /// random token written to a new 0600 file, whose path is printed]
    #[arg(long, value_name = "PATH", requires = "http")]
    pub token_file: Option<PathBuf>,
}

/// `orchctl tools`.
#[derive(Debug, Args)]
pub struct ToolsArgs {
    /// Only the MCP servers of this agent profile
    pub agent: Option<String>,

    /// How long each server may take to start and list its tools
    #[arg(long, value_name = "DUR", default_value = "20s", value_parser = positive_duration)]
    pub timeout: u64,
}

/// `orchctl daemon ...`.
#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Version, uptime, pid, socket, store, limits backend, counts by state
    #[command(after_help = "Examples:\n  orchctl daemon status\n  orchctl daemon status -o json")]
    Status,
    /// Re-read the daemon's config (a bad config is refused and the old one kept)
    #[command(after_help = "Example:\n  orchctl daemon reload")]
    Reload,
    /// Re-execute the orchd binary at its path in place (after installing a new one):
    /// agents keep running (live_restore) and the new daemon re-attaches to them
    #[command(after_help = "Example:\n  orchctl daemon upgrade")]
    Upgrade,
    /// The effective config, key by key, with where each value comes from (secrets redacted)
    #[command(after_help = "Examples:\n  orchctl daemon config\n  orchctl daemon config -o json")]
    Config,
}

/// `orchctl submit`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["plan", "command", "agent", "planner"])))]
pub struct SubmitArgs {
    /// A plan file (.toml, .yaml, .yml or .json)
    #[arg(value_name = "PLAN")]
    pub plan: Option<PathBuf>,

    /// A command to run as a one-step objective (give it after `--`)
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,

    /// Run this agent profile as a one-step objective (with --prompt)
    #[arg(long, value_name = "NAME", requires = "prompt")]
    pub agent: Option<String>,

    /// The prompt for --agent
    #[arg(long, value_name = "TEXT", requires = "agent", conflicts_with_all = ["plan", "command"])]
    pub prompt: Option<String>,

    /// A goal-only objective: the goal its planner agent (--planner) makes a plan for
    #[arg(long, value_name = "TEXT", requires = "planner", conflicts_with_all = ["plan", "command", "agent"])]
    pub goal: Option<String>,

    /// The agent profile that plans a --goal objective's steps
    #[arg(long, value_name = "AGENT", requires = "goal")]
    pub planner: Option<String>,

    /// The agent profile that judges a --goal objective's result
    #[arg(
        long,
        value_name = "AGENT",
        requires = "goal",
        conflicts_with = "verify_command"
    )]
    pub verifier: Option<String>,

    /// A shell command that judges a --goal objective's result (exit 0 = pass)
    #[arg(long, value_name = "CMD", requires = "goal")]
    pub verify_command: Option<String>,

    /// Plan → execute → verify rounds of a --goal objective before it fails [default: 3]
    #[arg(long, value_name = "N", requires = "goal")]
    pub max_rounds: Option<u32>,

    /// Objective name [default: the plan's name, or the command]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Working directory that relative step workdirs start from [default: the current directory]
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,

    /// Set an environment variable for every step (repeatable)
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env_kv)]
    pub env: Vec<(String, String)>,

    /// Allow N attempts after the first one
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,

    /// Where every step works: shared (the workdir as it is), worktree (a git worktree
    /// on a branch of its own) or scratch (a private empty directory)
    #[arg(long, value_name = "KIND")]
    pub workspace: Option<String>,

    /// Wall-clock limit per attempt (e.g. 30s, 10m, 2h)
    #[arg(long, value_name = "DUR", value_parser = positive_duration)]
    pub timeout: Option<u64>,

    /// End an attempt that writes no output for this long
    #[arg(long, value_name = "DUR", value_parser = positive_duration)]
    pub idle_timeout: Option<u64>,

    /// Memory limit per attempt (e.g. 512M, 2G)
    #[arg(long, value_name = "SIZE", value_parser = memory_size)]
    pub memory: Option<u64>,

    /// CPU time limit per attempt, in seconds
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub cpu_seconds: Option<u64>,

    /// Budget of the objective in US dollars
    #[arg(long, value_name = "X", value_parser = budget)]
    pub budget_usd: Option<f64>,

    /// Idempotency key: submitting the same key again returns the same objective
    #[arg(long, value_name = "KEY")]
    pub request_id: Option<String>,

    /// Do not send this shell's environment (the agent gets the daemon's minimal one)
    #[arg(long)]
    pub clean_env: bool,

    /// Wait until the objective ends; exit 0 iff it succeeded
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,

    /// Stream the objective's events until it ends; exit 0 iff it succeeded
    #[arg(long, conflicts_with = "dry_run")]
    pub watch: bool,

    /// Validate and print the resolved plan; nothing is stored
    #[arg(long)]
    pub dry_run: bool,
}

/// `orchctl agents disable|enable`.
#[derive(Debug, Subcommand)]
pub enum AgentsAction {
    /// Never route to this profile (until enabled, or for a while); audited
    #[command(after_help = "Examples:\n  \
  orchctl agents disable claude --reason 'provider outage'\n  \
  orchctl agents disable codex --for 2h")]
    Disable {
        /// The agent profile
        name: String,
        /// Only for this long (e.g. 30m, 2h); then it is enabled again by itself
        #[arg(long = "for", value_name = "DUR", value_parser = positive_duration)]
        for_ms: Option<u64>,
        /// Why (shown by `orchctl agents`, recorded in the event)
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Let routing choose this profile again; audited
    #[command(after_help = "Example:\n  orchctl agents enable claude")]
    Enable {
        /// The agent profile
        name: String,
    },
}

/// `orchctl watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only this objective (id, unique prefix or `last`): its history from the first event,
    /// then live, until it ends
    #[arg(add = ArgValueCompleter::new(complete::ids))]
    pub id: Option<String>,

    /// Start at the first event whose sequence number is at least SEQ
    #[arg(long, value_name = "SEQ")]
    pub from: Option<u64>,

    /// Only these event kinds (comma-separated, e.g. step_state,attempt_ended)
    #[arg(long, value_name = "K1,K2", value_delimiter = ',')]
    pub kinds: Vec<String>,
}

/// `orchctl logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Objective id: a unique prefix (4+ characters) or `last`
    #[arg(add = ArgValueCompleter::new(complete::ids))]
    pub id: String,

    /// Only this step (default: every step's latest attempt, in plan order)
    pub step: Option<String>,

    /// This attempt number (default: the latest)
    #[arg(long, value_name = "N")]
    pub attempt: Option<u32>,

    /// Keep following the output until the attempt ends
    #[arg(short = 'f', long)]
    pub follow: bool,

    /// Only the last N lines of each log
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,

    /// Only stdout
    #[arg(long, conflicts_with = "stderr")]
    pub stdout: bool,

    /// Only stderr
    #[arg(long)]
    pub stderr: bool,
}

/// Parses `K=V` for `--env`.
pub fn parse_env_kv(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some(("", _)) => Err(format!("`{text}`: the variable name is empty")),
        Some((k, v)) => {
            if k.contains('\0') || v.contains('\0') {
                Err(format!("`{k}`: contains a NUL byte"))
            } else {
                Ok((k.to_string(), v.to_string()))
            }
        }
        None => Err(format!("`{text}` is not K=V")),
    }
}

fn positive_duration(text: &str) -> Result<u64, String> {
    match parse_duration_ms(text)? {
        0 => Err("must be longer than zero".into()),
        ms => Ok(ms),
    }
}

fn memory_size(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes < 1 << 20 {
        return Err(format!("{bytes} bytes is below the minimum of 1M"));
    }
    Ok(bytes)
}

fn budget(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .trim_start_matches('$')
        .parse()
        .map_err(|_| format!("`{text}` is not a number of dollars"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("must be a non-negative number, got {text}"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_help_has_an_example() {
        fn check(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                let help = sub
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if !help.contains("Example") {
                    missing.push(name.clone());
                }
                check(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        check(&Cli::command(), "orchctl", &mut missing);
        assert!(missing.is_empty(), "no example in --help: {missing:?}");
    }

    #[test]
    fn env_kv() {
        assert_eq!(parse_env_kv("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env_kv("A="), Ok(("A".into(), String::new())));
        assert!(parse_env_kv("A").is_err());
        assert!(parse_env_kv("=b").is_err());
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for argv in [
            vec!["orchctl", "submit", "--env", "NOEQUALS", "--", "true"],
            vec!["orchctl", "submit", "--timeout", "soon", "--", "true"],
            vec!["orchctl", "submit", "--memory", "12", "--", "true"],
            vec!["orchctl", "submit", "--cpu-seconds", "0", "--", "true"],
            vec!["orchctl", "submit"],
            vec!["orchctl", "submit", "p.toml", "--", "true"],
            vec!["orchctl", "submit", "--agent", "claude", "--", "true"],
            vec!["orchctl", "submit", "--prompt", "x", "--", "true"],
            vec!["orchctl", "-o", "yaml", "list"],
        ] {
            let e = Cli::try_parse_from(&argv).err();
            let e = e.unwrap_or_else(|| panic!("{argv:?} must fail"));
            assert_eq!(e.exit_code(), 2, "{argv:?}");
        }
    }

    #[test]
    fn submit_forms_parse() {
        let cli = Cli::try_parse_from([
            "orchctl",
            "submit",
            "--retries",
            "2",
            "--",
            "echo",
            "-n",
            "hi",
        ]);
        let Ok(Cli {
            command: Command::Submit(s),
            ..
        }) = cli
        else {
            panic!("parse failed");
        };
        assert_eq!(s.command, vec!["echo", "-n", "hi"]);
        assert_eq!(s.retries, Some(2));
        let cli = Cli::try_parse_from(["orchctl", "-o", "json", "watch", "X", "--kinds", "a,b"]);
        let Ok(Cli {
            command: Command::Watch(w),
            output,
            ..
        }) = cli
        else {
            panic!("parse failed");
        };
        assert_eq!(output, Format::Json);
        assert_eq!(w.kinds, vec!["a", "b"]);
    }
}
