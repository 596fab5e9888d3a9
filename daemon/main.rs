//! `orchd`: the orch daemon. Startup order: config → logging → umask 077 → state dir
//! (checked, created or tightened) and its lock → store → recovery → socket (its directory
//! checked or created) → serve → READY=1; SIGTERM/SIGINT drain and exit 0.

mod activation;
mod api;
mod config;
mod disk;
mod engine;
mod executor;
mod goal;
mod journal;
mod limits;
mod logfile;
mod man;
mod model;
mod plans;
mod runner;
mod store;
mod sys;
mod upgrade;
mod workspace;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use orch_proto::paths;
use orch_proto::v1::orchestrator_server::OrchestratorServer;

/// The orch daemon: supervises AI agent processes and serves the orch gRPC API on a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "orchd", version, about, long_about = None)]
struct Cli {
    /// Unix socket to serve on [env: ORCH_SOCKET] [default: $XDG_RUNTIME_DIR/orch/orchd.sock, /run/orch/orchd.sock for root]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// State directory (store and logs) [env: ORCH_STATE_DIR] [default: $XDG_STATE_HOME/orch, /var/lib/orch for root]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Config file [env: ORCH_CONFIG] [default: $XDG_CONFIG_HOME/orch/orchd.toml, /etc/orch/orchd.toml for root]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Agents running at once [env: ORCH_MAX_PARALLEL] [default: number of CPUs]
    #[arg(long, value_name = "N")]
    max_parallel: Option<u32>,
    /// Limits backend: auto, cgroup-v2 or rlimit [env: ORCH_LIMITS_BACKEND]
    #[arg(long, value_name = "BACKEND")]
    limits_backend: Option<String>,
    /// Time between SIGTERM and SIGKILL when stopping an agent [env: ORCH_GRACE_PERIOD] [default: 10s]
    #[arg(long, value_name = "DUR")]
    grace_period: Option<String>,
    /// Log format on stderr: text or json
    #[arg(
        long,
        value_name = "FORMAT",
        env = "ORCH_LOG_FORMAT",
        hide_env_values = true,
        default_value = "text"
    )]
    log_format: String,
    /// Print the effective config (defaults, file, environment and flags merged) as TOML and exit
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    // glibc gives each thread that allocates its own 64 MiB arena (up to 8 per core): with
    // tokio's workers, its blocking pool and sled's threads, freed memory stays spread
    // over many arenas and resident. Two arenas keep the daemon's memory compact.
    sys::limit_malloc_arenas(2);
    // `orchd __shim DIR`: the supervisor of one attempt (live restore), started by orchd.
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new(executor::shim::SHIM_ARG)) {
        sys::restrict_umask(UMASK);
        return match args.next() {
            Some(a) if a == executor::shim::process::SPARE_ARG => {
                executor::shim::process::spare_main()
            }
            Some(dir) => executor::shim::process::main(Path::new(&dir)),
            None => {
                eprintln!(
                    "orchd {}: the attempt's directory is missing",
                    executor::shim::SHIM_ARG
                );
                ExitCode::FAILURE
            }
        };
    }
    man::generate_if_asked(<Cli as clap::CommandFactory>::command());
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Plain words on stderr (journald captures stderr under systemd too).
            eprintln!("orchd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Before anything else may start a thread: it edits the environment.
    let activated = activation::take()?;
    let (config_path, explicit) = config::config_path(cli.config.clone());
    let file = config::read_file(&config_path, explicit)?;
    let overrides = config::Overrides {
        socket: cli.socket.clone(),
        state_dir: cli.state_dir.clone(),
        max_parallel: cli.max_parallel,
        limits_backend: cli.limits_backend.clone(),
        grace_period: cli.grace_period.clone(),
    };
    let cfg = file.layer(&overrides)?;
    if cli.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    init_logging(&cli.log_format)?;
    sys::restrict_umask(UMASK);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("orchd")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(cfg, config_path, explicit, overrides, activated))
}

fn init_logging(format: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Under systemd (JOURNAL_STREAM set) log to the journal with structured fields when it
    // answers (docs/operating.md: `journalctl -u orchd OBJECTIVE_ID=...`); else stderr.
    if journal::wanted()
        && let Ok(layer) =
            journal::JournalLayer::connect(Path::new(journal::JOURNAL_SOCKET), "orchd")
    {
        tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .init();
        return Ok(());
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    match format {
        "json" => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .json()
            .init(),
        "text" => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .init(),
        other => bail!("--log-format: `{other}` is not one of text, json"),
    }
    Ok(())
}

/// The umask orchd runs with: what it (and sled) creates is its user's alone unless it widens
/// a mode on purpose. Agents get the umask orchd was started with (`sys::child_pre_exec`).
const UMASK: u32 = 0o077;

/// The mode of the state directory: 0700, or 0711 for a root daemon, whose agents run as
/// other users and must reach the checkpoint files handed to them (they may pass through,
/// not list; everything in it but `checkpoints/` stays 0700 or 0600).
fn state_dir_mode() -> u32 {
    if sys::effective_uid() == 0 {
        0o711
    } else {
        0o700
    }
}

/// Creates `dir` and whatever is missing above it, one directory at a time, calling `made`
/// on each directory this call created (to set its mode and group). Returns whether `dir`
/// itself was created. A directory that appears meanwhile (made by someone else) is not
/// ours and is left alone.
fn create_missing(dir: &Path, made: &dyn Fn(&Path) -> anyhow::Result<()>) -> anyhow::Result<bool> {
    match fs::symlink_metadata(dir) {
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", dir.display())),
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_missing(parent, made)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            made(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot create directory {}", dir.display())),
    }
}

/// Sets the mode of `path`, which orchd made or owns.
fn chmod(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))
}

/// Makes the state directory ready: created (mode [`state_dir_mode`]) if missing; else it
/// must be orchd's user's own (then its mode is set to that, tightening a loose one), under
/// directories only that user or root can change. Refuses anything else, naming the path
/// and the problem. Entries directly inside it lose any group and other bits.
fn prepare_state_dir(dir: &Path) -> anyhow::Result<()> {
    let uid = sys::effective_uid();
    let side = paths::Side::Daemon(uid);
    let want = state_dir_mode();
    let created = create_missing(dir, &|d| chmod(d, want))?;
    let refuse = |problem| paths::Untrusted {
        subject: paths::Subject::StateDir,
        path: dir.to_path_buf(),
        side,
        problem,
    };
    let real = match paths::check_above(dir, paths::Subject::StateDir, side) {
        Ok(Some(real)) => real,
        Ok(None) => bail!(
            "state directory {} does not exist (a dangling symbolic link?)",
            dir.display()
        ),
        Err(e) => bail!("{e}"),
    };
    let meta = fs::metadata(&real).with_context(|| format!("cannot inspect {}", real.display()))?;
    match paths::judge_state_dir(paths::Facts::of(&meta), uid, want) {
        Ok(paths::StateVerdict::Keep) => {}
        Ok(paths::StateVerdict::Chmod { from, to }) => {
            chmod(&real, to)?;
            if !created {
                tracing::warn!(state_dir = %dir.display(), from = format!("{from:04o}"), to = format!("{to:04o}"), "set the mode of the state directory");
            }
        }
        Err(problem) => bail!("{}", refuse(problem)),
    }
    tighten_entries(&real, uid, want)
}

/// Takes group and other bits off what lies directly in the state directory and is orchd's
/// (a store or logs left by an older orchd, under a wider umask): directories become 0700
/// (`checkpoints/` and the objectives' directories in it get the state directory's mode,
/// so agents can reach their checkpoint files), files keep only their owner's bits.
fn tighten_entries(state: &Path, uid: u32, dir_mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let entries = |dir: &Path| -> anyhow::Result<Vec<(PathBuf, fs::Metadata)>> {
        let read = fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        Ok(read
            .filter_map(|e| e.ok())
            .filter_map(|e| fs::symlink_metadata(e.path()).ok().map(|m| (e.path(), m)))
            .filter(|(_, m)| m.uid() == uid && !m.file_type().is_symlink())
            .collect())
    };
    let set = |path: &Path, meta: &fs::Metadata, mode: u32| -> anyhow::Result<()> {
        if meta.mode() & 0o7777 != mode {
            tracing::info!(path = %path.display(), from = format!("{:04o}", meta.mode() & 0o7777), to = format!("{mode:04o}"), "tightening");
            chmod(path, mode)?;
        }
        Ok(())
    };
    for (path, meta) in entries(state)? {
        if meta.is_dir() && path.file_name() == Some(std::ffi::OsStr::new("checkpoints")) {
            set(&path, &meta, dir_mode)?;
            for (sub, m) in entries(&path)? {
                set(&sub, &m, if m.is_dir() { dir_mode } else { 0o600 })?;
            }
        } else if meta.is_dir() {
            set(&path, &meta, 0o700)?;
        } else {
            set(&path, &meta, meta.mode() & 0o700)?;
        }
    }
    Ok(())
}

/// Holds the state directory's lock for the daemon's lifetime. A POSIX record lock
/// (`fcntl`), not `flock`: forked children do not share it, so an agent caught between
/// fork and exec when the daemon dies cannot keep a restarted daemon out.
struct StateLock {
    _file: fs::File,
}

fn lock_state_dir(dir: &Path) -> anyhow::Result<StateLock> {
    let path = dir.join("orchd.lock");
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    match sys::try_lock_record(&file) {
        Ok(true) => {}
        Ok(false) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            bail!(
                "another orchd{} is already running with state directory {}",
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                },
                dir.display()
            );
        }
        Err(err) => bail!("cannot lock {}: {err}", path.display()),
    }
    file.set_len(0).ok();
    let _ = writeln!(file, "{}", std::process::id());
    Ok(StateLock { _file: file })
}

/// Opens the store. With the state lock held no other daemon can own it, so a store lock
/// still held can only be a child of a daemon that was killed, caught between fork and
/// exec (it shares sled's `flock` until it execs): that clears within moments.
async fn open_store(dir: &Path) -> anyhow::Result<store::Store> {
    let give_up = Instant::now() + Duration::from_secs(10);
    let mut warned = false;
    loop {
        match store::Store::open(dir) {
            Err(store::StoreError::Locked { .. }) if Instant::now() < give_up => {
                if !warned {
                    tracing::warn!(store = %dir.display(), "the store is still locked by a process of the previous orchd; waiting");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => return Ok(r?),
        }
    }
}

/// Binds the socket. Its directory is created if missing (then it is orchd's: mode 0700,
/// or `root:orch` 0750 for a system daemon when group `orch` exists); an existing one is
/// never changed, only checked: it and everything above it must be orchd's user's or root's
/// and not writable by others (`paths::check_socket_dir`). A socket already there must be
/// orchd's user's or root's too; a live daemon answering on it is refused, a stale one
/// removed. The socket is 0600, or `root:orch` 0660 for a system daemon.
fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let uid = sys::effective_uid();
    let side = paths::Side::Daemon(uid);
    // A system daemon shares its socket with the members of group `orch`; every other
    // daemon keeps it to its own user.
    let group = (uid == 0)
        .then(|| sys::group_id("orch").ok().flatten())
        .flatten();
    let dir = paths::socket_dir(path);
    create_missing(dir, &|d| match group {
        Some(gid) => {
            sys::set_owner(d, None, Some(gid))
                .with_context(|| format!("cannot give {} to group orch", d.display()))?;
            chmod(d, 0o750)
        }
        None => chmod(d, 0o700),
    })?;
    match paths::check_socket_dir(dir, side) {
        Ok(Some(_)) => {}
        Ok(None) => bail!(
            "socket directory {} does not exist (a dangling symbolic link?)",
            dir.display()
        ),
        Err(e) => bail!("{e}"),
    }
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            if !side.trusts(meta.uid()) {
                bail!(
                    "{}",
                    paths::Untrusted {
                        subject: paths::Subject::Socket,
                        path: path.to_path_buf(),
                        side,
                        problem: paths::Problem::Owner { owner: meta.uid() },
                    }
                );
            }
            if !meta.file_type().is_socket() {
                bail!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                );
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another orchd is already running on socket {} (stop it first, or use --socket)",
                    path.display()
                );
            }
            tracing::info!(socket = %path.display(), "removing stale socket");
            fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    // Created with a restrictive umask so there is no window where it is wider than 0600.
    let listener = sys::with_umask(0o177, || UnixListener::bind(path));
    let listener = listener.with_context(|| format!("cannot bind socket {}", path.display()))?;
    let mode = match group {
        Some(gid) => {
            sys::set_owner(path, None, Some(gid))
                .with_context(|| format!("cannot give {} to group orch", path.display()))?;
            0o660
        }
        None => 0o600,
    };
    chmod(path, mode)?;
    tracing::info!(socket = %path.display(), mode = format!("{mode:o}"), group = if group.is_some() { "orch" } else { "" }, "socket bound");
    Ok(listener)
}

async fn serve(
    cfg: config::Config,
    config_path: PathBuf,
    explicit: bool,
    overrides: config::Overrides,
    activated: Option<activation::Activated>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    // A socket passed by systemd is served as it is, wherever the config says.
    let socket = match &activated {
        Some(a) => {
            if a.path != cfg.socket() {
                tracing::warn!(passed = %a.path.display(), configured = %cfg.socket().display(), "serving on the socket systemd passed, not the configured one");
            }
            a.path.clone()
        }
        None => cfg.socket(),
    };
    let socket_activated = activated.is_some();
    let state_dir = cfg.state_dir();
    prepare_state_dir(&state_dir)?;
    let _lock = lock_state_dir(&state_dir)?;
    let store = open_store(&state_dir.join("store")).await?;
    let limiter = Arc::new(limits::Limiter::detect(
        &cfg.limits_backend,
        &instance_name(&state_dir),
    )?);
    let limits_backend = limiter.name().to_string();
    let limits_detail = limiter.detail.clone();
    tracing::info!(backend = %limits_backend, detail = %limits_detail, "limits backend");
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        state_dir = %state_dir.display(),
        limits_backend = %limits_backend,
        max_parallel = cfg.max_parallel(),
        "orchd starting"
    );

    let cfg = Arc::new(cfg);
    let executors = Arc::new(executor::Executors {
        local: executor::LocalExecutor::new(limiter.clone()),
        shim: executor::ShimExecutor::new(
            limiter.clone(),
            &state_dir,
            Some(runner::Threads(Arc::new(store.clone()))),
            &cfg,
        ),
        live_restore: cfg.live_restore,
        slurm: cfg.executors.slurm.clone().map(|s| {
            tracing::info!(output_dir = %s.output_dir.display(), "Slurm executor configured");
            executor::SlurmExecutor::new(s, &cfg)
        }),
    });
    if cfg.live_restore {
        executors.shim.prepare_spare();
    }
    // Live events buffered for watchers; one that falls further behind is re-fed from the store.
    let (events_tx, _) = broadcast::channel(16384);
    let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let disk = Arc::new(disk::Disk::new(&state_dir, cfg.store.min_free.0));
    let mut engine = engine::Engine::new(
        store.clone(),
        cfg.clone(),
        events_tx.clone(),
        executors.clone(),
        published.clone(),
        disk.clone(),
    )?;
    let t = Instant::now();
    let recovery = engine.recover().await?;
    tracing::info!(
        objectives = recovery.objectives,
        interrupted_attempts = recovery.interrupted_attempts,
        killed_trees = recovery.killed_trees,
        ms = t.elapsed().as_millis() as u64,
        "recovery done"
    );

    // Handled before the socket exists: a client may signal orchd as soon as it can
    // connect, and the default action of SIGTERM would kill it without draining.
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut activated_copy: Option<std::os::unix::net::UnixListener> = None;
    let listener = match activated {
        Some(a) => {
            tracing::info!(socket = %a.path.display(), "serving on the socket systemd passed");
            // A copy kept for an upgrade: the re-executed image serves on the same socket.
            activated_copy = a.listener.try_clone().ok();
            UnixListener::from_std(a.listener).context("cannot use the socket systemd passed")?
        }
        None => bind_socket(&socket)?,
    };
    let mut usr2 = signal(SignalKind::user_defined2()).context("cannot handle SIGUSR2")?;
    let upgrade = Arc::new(upgrade::Upgrade::new());
    let handover = engine.handover();
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (stop_engine, engine_stop_rx) = oneshot::channel();
    let engine_task = tokio::spawn(engine.run(cmd_rx, engine_stop_rx));
    {
        // Measuring the logs walks every file kept: done beside the engine, not before it.
        let logs = state_dir.join("logs");
        let engine = cmd_tx.clone();
        tokio::spawn(async move {
            if let Ok(n) = tokio::task::spawn_blocking(move || engine::dir_size(&logs)).await {
                let _ = engine.send(engine::Command::LogBytes(n)).await;
            }
        });
    }

    let (cfg_tx, cfg_rx) = watch::channel(cfg.clone());
    {
        // The logs of running attempts draw from one budget; a reload sets new limits.
        let budget = logfile::budget();
        budget.set_caps(cfg.logs.max_total_bytes.0, cfg.logs.user_bytes());
        let mut changes = cfg_rx.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let logs = changes.borrow_and_update().logs.clone();
                budget.set_caps(logs.max_total_bytes.0, logs.user_bytes());
            }
        });
    }
    let reloader = Arc::new(api::Reloader {
        path: config_path.clone(),
        explicit,
        overrides,
        current: cfg_tx,
        engine: cmd_tx.clone(),
    });
    let info = Arc::new(api::DaemonInfo {
        socket: socket.clone(),
        state_dir: state_dir.clone(),
        config_path: config_path.clone(),
        limits_backend,
        limits_detail,
        started,
        socket_activated,
        executors: executors.clone(),
        disk,
        upgrade: upgrade.clone(),
        started_ms: model::now_ms() - started.elapsed().as_millis() as i64,
    });
    let service = api::Api::new(
        cmd_tx.clone(),
        store.clone(),
        cfg_rx,
        info,
        events_tx.clone(),
        published.clone(),
        reloader.clone(),
    );

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<OrchestratorServer<api::Api>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(orch_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(orch_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("cannot build the reflection service")?;

    // What clients may hold: connections per user and overall (fitted to the open-files
    // limit, raised as far as they need), idle connections closed, request and watch bytes.
    let server_cfg = &cfg.server;
    let open_files = match sys::raise_open_files(api::wanted_open_files(server_cfg)) {
        Ok(files) => files.soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit; assuming 1024");
            1024
        }
    };
    let (client_limits, lowered) = api::ClientLimits::new(server_cfg, open_files);
    if let Some(why) = lowered {
        tracing::warn!("{why}");
    }
    tracing::info!(
        max_connections = client_limits.max_connections,
        max_connections_per_user = client_limits.max_connections_per_user,
        open_files,
        "client limits"
    );
    let admission = api::Admission::new(client_limits, sys::effective_uid());
    let (stop_server, server_stop_rx) = oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(server_cfg.max_streams_per_connection)
        .http2_keepalive_interval(Some(Duration::from_millis(server_cfg.keepalive_interval.0)))
        .http2_keepalive_timeout(Some(Duration::from_millis(server_cfg.keepalive_timeout.0)))
        .http2_max_header_list_size(16 << 10)
        .max_frame_size(16 << 10)
        .layer(admission.layer())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            OrchestratorServer::new(service).max_decoding_message_size(api::MAX_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(admission.incoming(listener), async {
            let _ = server_stop_rx.await;
        });
    // READY=1 goes out before the first answer: the socket is bound (callers queue in its
    // backlog), and a client that saw an answer must find systemd knowing orchd is ready.
    // After an upgrade that client is `systemctl reload`'s ExecReload: were its exit seen
    // first, systemd would act on the old image's last state instead.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let server_task = tokio::spawn(server);

    tracing::info!(socket = %socket.display(), "orchd ready");
    spawn_watchdog(cmd_tx.clone());

    {
        let reloader = reloader.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if let Err(e) = reloader.reload().await {
                    tracing::error!(error = %e, "SIGHUP: the new config is refused; the running config is kept");
                }
            }
        });
    }
    {
        // SIGUSR2 (`systemctl reload`): the same as `orchctl daemon upgrade`.
        let upgrade = upgrade.clone();
        tokio::spawn(async move {
            while usr2.recv().await.is_some() {
                match upgrade.check().await {
                    Ok(version) => {
                        tracing::info!(binary = %upgrade.exe.display(), new_version = %version, "SIGUSR2: upgrading");
                        upgrade.request();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "SIGUSR2: the upgrade is refused; the running daemon is kept")
                    }
                }
            }
        });
    }
    let mut engine_task = engine_task;
    let mut upgrading = false;
    let engine_result = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: stopping"); None }
        _ = int.recv() => { tracing::info!("SIGINT: stopping"); None }
        _ = upgrade.requested() => {
            upgrading = true;
            handover.store(true, std::sync::atomic::Ordering::SeqCst);
            None
        }
        r = &mut engine_task => Some(r),
    };
    notify_leaving(upgrading);
    health_reporter
        .set_not_serving::<OrchestratorServer<api::Api>>()
        .await;
    let engine_result = match engine_result {
        Some(r) => r,
        None => {
            let _ = stop_engine.send(());
            engine_task.await
        }
    };
    // Streams held open by clients must not keep the daemon alive.
    let _ = stop_server.send(());
    drop(cmd_tx);
    if tokio::time::timeout(Duration::from_secs(2), server_task)
        .await
        .is_err()
    {
        tracing::warn!("clients still connected at exit");
    }
    // A passed socket is systemd's: it stays, and the next connection starts orchd again.
    if !socket_activated {
        let _ = fs::remove_file(&socket);
    }
    executors.shim.retire_spare();
    if upgrading && matches!(engine_result, Ok(Ok(()))) {
        store.flush_blocking()?;
        drop(store);
        tracing::info!(binary = %upgrade.exe.display(), "re-executing");
        let e = upgrade.exec(activated_copy.as_ref().map(std::os::fd::AsRawFd::as_raw_fd));
        bail!("cannot re-execute {}: {e}", upgrade.exe.display());
    }
    limiter.cleanup();
    store.flush_blocking()?;
    match engine_result {
        Ok(Ok(())) => {
            tracing::info!("orchd stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(e).context("the engine stopped on a store error"),
        Err(e) => bail!("the engine task failed: {e}"),
    }
}

/// A short stable name for this daemon instance (its cgroup subtree when it must make one).
fn instance_name(state_dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    state_dir.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Tells the service manager why orchd leaves its loop. A stop is STOPPING=1. An upgrade
/// is RELOADING=1 (with the MONOTONIC_USEC systemd ≥ 253 asks for): the same pid comes back
/// with READY=1. STOPPING=1 there would make systemd stop the service, at once when the
/// upgrade came from `orchctl daemon upgrade` or SIGUSR2, and when `systemctl reload`'s
/// control process ends before the new image's READY=1 is read.
fn notify_leaving(upgrading: bool) {
    use sd_notify::NotifyState;
    let mut states = vec![if upgrading {
        NotifyState::Reloading
    } else {
        NotifyState::Stopping
    }];
    if upgrading && let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    let _ = sd_notify::notify(&states);
}

/// Pings systemd's watchdog while the engine loop answers (only when WatchdogSec is set).
fn spawn_watchdog(engine: mpsc::Sender<engine::Command>) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = timeout / 2;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let (tx, rx) = oneshot::channel();
            if engine
                .send(engine::Command::Ping { reply: tx })
                .await
                .is_err()
            {
                return;
            }
            if rx.await.is_ok() {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        }
    });
}
