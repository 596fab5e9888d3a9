//! Where things live (the contract's default paths) and whether to trust them: the owner
//! and mode checks `orchctl` makes before it connects and `orchd` makes before it binds its
//! socket or uses its state directory, as ssh-agent and tmux do.
//!
//! The rule: a path is trusted when no user other than the expected one (the caller for
//! `orchctl`, the daemon's user for `orchd`) and root can change what it leads to. So the
//! socket, its directory, every directory above it and every symbolic link on the way must
//! belong to that user or root, and no directory on the way may be writable by anyone else,
//! unless it is sticky (`/tmp`): in a sticky directory only a file's owner, the directory's
//! owner and root can remove or rename the file, so a trusted file in it stays put. A
//! directory writable by the user's own private group (user private groups: the user's
//! primary group with no other member, as Debian's OpenSSH accepts) counts as the user's. The
//! decisions are pure functions of owner and mode (`judge_*`), tested without files; the
//! `check_*` functions gather those facts with `lstat`/`stat` and apply them.

use std::fmt;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

fn env_path(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home() -> PathBuf {
    env_path("HOME").unwrap_or_else(|| PathBuf::from("/"))
}

/// Whether this process runs as root (root uses the system-service paths).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// The effective uid of this process: the user whose socket and state are expected.
pub fn effective_uid() -> u32 {
    nix::unistd::Uid::effective().as_raw()
}

/// The default socket: `/run/orch/orchd.sock` for root, else
/// `$XDG_RUNTIME_DIR/orch/orchd.sock` (falling back to `/tmp/orch-$UID/orchd.sock`).
pub fn default_socket() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/orch/orchd.sock");
    }
    match env_path("XDG_RUNTIME_DIR") {
        Some(dir) => dir.join("orch").join("orchd.sock"),
        None => {
            PathBuf::from(format!("/tmp/orch-{}", nix::unistd::Uid::effective())).join("orchd.sock")
        }
    }
}

/// The default state directory: `/var/lib/orch` for root, else `$XDG_STATE_HOME/orch`.
pub fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/orch");
    }
    env_path("XDG_STATE_HOME")
        .unwrap_or_else(|| home().join(".local").join("state"))
        .join("orch")
}

/// The default config file: `/etc/orch/orchd.toml` for root, else `$XDG_CONFIG_HOME/orch/orchd.toml`.
pub fn default_config() -> PathBuf {
    if is_root() {
        return PathBuf::from("/etc/orch/orchd.toml");
    }
    env_path("XDG_CONFIG_HOME")
        .unwrap_or_else(|| home().join(".config"))
        .join("orch")
        .join("orchd.toml")
}

/// The system daemon's socket (`orchd.socket`, group `orch`).
pub const SYSTEM_SOCKET: &str = "/run/orch/orchd.sock";

/// Where a client's socket came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketOrigin {
    /// `--socket`.
    Flag,
    /// `ORCH_SOCKET`.
    Env,
    /// The caller's own default (root's is the system socket).
    Own,
    /// The system daemon's socket, because the caller has no daemon of their own.
    System,
}

impl SocketOrigin {
    /// How `orchctl daemon status` says it.
    pub fn describe(self) -> &'static str {
        match self {
            SocketOrigin::Flag => "given by --socket",
            SocketOrigin::Env => "given by ORCH_SOCKET",
            SocketOrigin::Own => "your default socket",
            SocketOrigin::System => "the system daemon's socket (you have no daemon of your own)",
        }
    }

    /// The word in JSON.
    pub fn word(self) -> &'static str {
        match self {
            SocketOrigin::Flag => "flag",
            SocketOrigin::Env => "env",
            SocketOrigin::Own => "own",
            SocketOrigin::System => "system",
        }
    }
}

/// The socket a client should use: flag, then `ORCH_SOCKET`, then the default.
pub fn client_socket(flag: Option<PathBuf>) -> PathBuf {
    client_socket_choice(flag).0
}

/// The socket a client should use and why: flag, then `ORCH_SOCKET`, then the caller's own
/// default socket when it exists, else the system daemon's when that exists (as docker's
/// client does), else the own default (whose absence the connection reports). The usual
/// owner and mode checks apply to whichever is chosen.
pub fn client_socket_choice(flag: Option<PathBuf>) -> (PathBuf, SocketOrigin) {
    // A flag or ORCH_SOCKET decides without looking at the default sockets.
    let env = env_path("ORCH_SOCKET");
    if flag.is_some() || env.is_some() {
        return choose_socket(flag, env, Path::new(""), false, false);
    }
    let own = default_socket();
    let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    choose_socket(
        None,
        None,
        &own,
        exists(&own),
        exists(Path::new(SYSTEM_SOCKET)),
    )
}

/// [`client_socket_choice`]'s decision, on facts gathered beforehand.
pub fn choose_socket(
    flag: Option<PathBuf>,
    env: Option<PathBuf>,
    own: &Path,
    own_exists: bool,
    system_exists: bool,
) -> (PathBuf, SocketOrigin) {
    if let Some(p) = flag {
        return (p, SocketOrigin::Flag);
    }
    if let Some(p) = env {
        return (p, SocketOrigin::Env);
    }
    let system = Path::new(SYSTEM_SOCKET);
    if own == system || own_exists || !system_exists {
        return (own.to_path_buf(), SocketOrigin::Own);
    }
    (system.to_path_buf(), SocketOrigin::System)
}

/// Root's uid: trusted by everyone (it could impersonate anyone anyway).
const ROOT: u32 = 0;
/// The sticky bit (`S_ISVTX`).
const STICKY: u32 = 0o1000;

/// What kind of file a path is, as far as the checks care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Socket,
    Symlink,
    File,
    Other,
}

impl Kind {
    fn of(t: std::fs::FileType) -> Kind {
        if t.is_dir() {
            Kind::Dir
        } else if t.is_socket() {
            Kind::Socket
        } else if t.is_symlink() {
            Kind::Symlink
        } else if t.is_file() {
            Kind::File
        } else {
            Kind::Other
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::Socket => "socket",
            Kind::Symlink => "symbolic link",
            Kind::File => "regular file",
            Kind::Other => "special file",
        }
    }
}

/// The facts about one file that the checks decide on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub kind: Kind,
    /// The owner's uid.
    pub uid: u32,
    /// The group's gid.
    pub gid: u32,
    /// Permission bits with set-id and sticky bits (`st_mode & 07777`).
    pub mode: u32,
}

impl Facts {
    /// The facts of `lstat`/`stat` metadata.
    pub fn of(meta: &std::fs::Metadata) -> Facts {
        Facts {
            kind: Kind::of(meta.file_type()),
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
        }
    }
}

/// Who is checking, which decides whom to trust besides root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `orchctl` run by this uid.
    Client(u32),
    /// `orchd` running as this uid.
    Daemon(u32),
}

impl Side {
    /// The expected user.
    pub fn uid(self) -> u32 {
        match self {
            Side::Client(uid) | Side::Daemon(uid) => uid,
        }
    }

    /// Whether a file owned by `owner` is under the control of no one but the expected
    /// user and root.
    pub fn trusts(self, owner: u32) -> bool {
        owner == self.uid() || owner == ROOT
    }

    /// "you (uid 1000) or root", "orchd's user (uid 1000) or root", or "root".
    fn expected(self, root_too: bool) -> String {
        let (who, uid) = match self {
            Side::Client(uid) => ("you", uid),
            Side::Daemon(uid) => ("orchd's user", uid),
        };
        if uid == ROOT {
            "root".to_string()
        } else if root_too {
            format!("{who} (uid {uid}) or root")
        } else {
            format!("{who} (uid {uid})")
        }
    }
}

/// What a refused path was going to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    SocketDir,
    Socket,
    StateDir,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::SocketDir => "socket directory",
            Subject::Socket => "socket",
            Subject::StateDir => "state directory",
        }
    }
}

/// Why a path is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Owned by someone other than the expected user (or root, where root is accepted).
    Owner { owner: u32 },
    /// A directory others may write to (group or world write bit, no sticky bit); `bits`
    /// are the write bits that let them.
    Writable { mode: u32, bits: u32 },
    /// A directory above it belongs to someone else.
    ParentOwner { parent: PathBuf, owner: u32 },
    /// A directory above it is writable by others.
    ParentWritable {
        parent: PathBuf,
        mode: u32,
        bits: u32,
    },
    /// A symbolic link on the way to it belongs to someone else.
    Link { link: PathBuf, owner: u32 },
    /// Not the kind of file it has to be.
    Kind { found: Kind, wanted: Kind },
    /// The process serving the socket runs as someone else (`SO_PEERCRED`).
    Peer { pid: Option<i32>, uid: u32 },
}

impl Problem {
    /// Whether the problem is who owns something (rather than who may write to it).
    fn is_ownership(&self) -> bool {
        matches!(
            self,
            Problem::Owner { .. }
                | Problem::ParentOwner { .. }
                | Problem::Link { .. }
                | Problem::Peer { .. }
        )
    }
}

/// A path refused by the checks. Its `Display` is the whole message: what, where, why and
/// what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    pub subject: Subject,
    /// The path as it was given (not resolved).
    pub path: PathBuf,
    pub side: Side,
    pub problem: Problem,
}

impl std::error::Error for Untrusted {}

/// `uid 1001 (mallory)`, or `uid 1001` for a uid without a name.
fn user(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("uid {uid} ({})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// "its group", "everyone", or "its group and everyone", for write bits.
fn writers(bits: u32) -> &'static str {
    match (bits & 0o020 != 0, bits & 0o002 != 0) {
        (true, true) => "its group and everyone",
        (true, false) => "its group",
        _ => "everyone",
    }
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = self.side;
        // A state directory must be the daemon's own; everything else may also be root's.
        let root_too = self.subject != Subject::StateDir;
        write!(
            f,
            "refusing {} {}: ",
            self.subject.name(),
            self.path.display()
        )?;
        let writable_dir = match &self.problem {
            Problem::Owner { owner } => {
                write!(
                    f,
                    "owned by {}, not {}",
                    user(*owner),
                    side.expected(root_too)
                )?;
                None
            }
            Problem::Writable { mode, bits } => {
                write!(
                    f,
                    "writable by {} (mode {mode:04o}) and not sticky",
                    writers(*bits)
                )?;
                Some(self.path.clone())
            }
            Problem::ParentOwner { parent, owner } => {
                write!(
                    f,
                    "the directory above it, {}, is owned by {}, not {}",
                    parent.display(),
                    user(*owner),
                    side.expected(true)
                )?;
                None
            }
            Problem::ParentWritable { parent, mode, bits } => {
                write!(
                    f,
                    "the directory above it, {}, is writable by {} (mode {mode:04o}) and not sticky",
                    parent.display(),
                    writers(*bits)
                )?;
                Some(parent.clone())
            }
            Problem::Link { link, owner } => {
                write!(
                    f,
                    "{} is a symbolic link owned by {}, not {}",
                    link.display(),
                    user(*owner),
                    side.expected(true)
                )?;
                None
            }
            Problem::Kind { found, wanted } => {
                write!(f, "it is a {}, not a {}", found.name(), wanted.name())?;
                None
            }
            Problem::Peer { pid, uid } => {
                let pid = pid.map_or(String::new(), |p| format!(" (pid {p})"));
                write!(
                    f,
                    "the process serving it{pid} runs as {}, not {}",
                    user(*uid),
                    side.expected(true)
                )?;
                None
            }
        };
        let chmod = |dir: &Path| format!("`chmod go-w {}`", dir.display());
        match (side, self.subject) {
            (Side::Client(_), _) => match writable_dir {
                Some(dir) => write!(
                    f,
                    "; anyone who can write there could put their own socket in its place — \
                     take their write access away ({}, as its owner) or use another socket \
                     (--socket or ORCH_SOCKET)",
                    chmod(&dir)
                ),
                None => write!(
                    f,
                    "; someone may be impersonating orchd — remove it (its owner or root can) \
                     or set XDG_RUNTIME_DIR (or --socket / ORCH_SOCKET) to a socket of your own"
                ),
            },
            (Side::Daemon(_), Subject::StateDir) => match writable_dir {
                Some(dir) => write!(
                    f,
                    "; another user could swap the state directory — take their write access \
                     away ({}) or choose another --state-dir / ORCH_STATE_DIR",
                    chmod(&dir)
                ),
                None if self.problem.is_ownership() => write!(
                    f,
                    "; orchd keeps its store only in a directory its own user owns — choose \
                     another --state-dir / ORCH_STATE_DIR, or give this one to {}",
                    user(side.uid())
                ),
                None => write!(f, "; choose another --state-dir / ORCH_STATE_DIR"),
            },
            (Side::Daemon(_), _) => match writable_dir {
                Some(dir) => write!(
                    f,
                    "; other users could replace orchd's socket — take their write access \
                     away ({}) or choose another --socket / ORCH_SOCKET (orchd never changes a \
                     directory it did not create)",
                    chmod(&dir)
                ),
                None => write!(
                    f,
                    "; another user could take over orchd's socket — remove it (its owner or \
                     root can) or choose another --socket / ORCH_SOCKET (orchd never changes a \
                     directory it did not create)"
                ),
            },
        }
    }
}

/// The write bits of a directory that let users other than the expected one (and root)
/// write to it: world write, and group write unless the group is `private_gid` (the
/// expected user's private group); none when it is sticky. Zero when only they can.
pub fn others_write_bits(f: Facts, private_gid: Option<u32>) -> u32 {
    if f.mode & STICKY != 0 {
        return 0;
    }
    let group = if Some(f.gid) == private_gid {
        0
    } else {
        f.mode & 0o020
    };
    group | (f.mode & 0o002)
}

/// Judges a directory that holds the socket or lies above the socket or the state
/// directory: owned by the expected user or root, and not writable by anyone else unless
/// sticky. `private_gid`: the expected user's private group ([`private_group`]).
pub fn judge_dir(f: Facts, side: Side, private_gid: Option<u32>) -> Result<(), Problem> {
    if f.kind != Kind::Dir {
        return Err(Problem::Kind {
            found: f.kind,
            wanted: Kind::Dir,
        });
    }
    if !side.trusts(f.uid) {
        return Err(Problem::Owner { owner: f.uid });
    }
    let bits = others_write_bits(f, private_gid);
    if bits != 0 {
        return Err(Problem::Writable { mode: f.mode, bits });
    }
    Ok(())
}

/// The primary group of `uid` when no one else is in it (a user private group: no member
/// listed but the user), whose write bit then lets only that user write.
pub fn private_group(uid: u32) -> Option<u32> {
    use nix::unistd::{Group, Uid, User};
    let user = User::from_uid(Uid::from_raw(uid)).ok().flatten()?;
    let group = Group::from_gid(user.gid).ok().flatten()?;
    group
        .mem
        .iter()
        .all(|m| *m == user.name)
        .then_some(group.gid.as_raw())
}

/// [`private_group`] of `uid` where it can matter to judging `f` (a group-writable,
/// not sticky directory), else `None` without looking: reading the user and group
/// databases is most of what a client's path checks cost, and most directories are not
/// group-writable.
fn private_group_for(f: Facts, lookup: impl FnOnce() -> Option<u32>) -> Option<u32> {
    if f.mode & STICKY == 0 && f.mode & 0o020 != 0 {
        lookup()
    } else {
        None
    }
}

/// Judges the socket file (or a symbolic link to it): owned by the expected user or root.
/// A root-owned socket is accepted by anyone. Whether it is a socket at all is left to
/// `connect`, which says so.
pub fn judge_socket(f: Facts, side: Side) -> Result<(), Problem> {
    if side.trusts(f.uid) {
        Ok(())
    } else if f.kind == Kind::Symlink {
        Err(Problem::Link {
            link: PathBuf::new(),
            owner: f.uid,
        })
    } else {
        Err(Problem::Owner { owner: f.uid })
    }
}

/// Judges the process that accepted the connection (its `SO_PEERCRED` uid): the
/// expected user or root.
pub fn judge_peer(uid: u32, pid: Option<i32>, side: Side) -> Result<(), Problem> {
    if side.trusts(uid) {
        Ok(())
    } else {
        Err(Problem::Peer { pid, uid })
    }
}

/// What to do with an existing state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateVerdict {
    /// It is as it should be.
    Keep,
    /// It is the daemon's own: set its mode from `from` to `to`.
    Chmod { from: u32, to: u32 },
}

/// Judges an existing state directory for a daemon running as `uid` that wants it at mode
/// `want`: a directory owned by exactly that user (a root daemon's by root) is set to `want`;
/// anything else is refused (its mode is not the daemon's to change).
pub fn judge_state_dir(f: Facts, uid: u32, want: u32) -> Result<StateVerdict, Problem> {
    if f.kind != Kind::Dir {
        return Err(Problem::Kind {
            found: f.kind,
            wanted: Kind::Dir,
        });
    }
    if f.uid != uid {
        return Err(Problem::Owner { owner: f.uid });
    }
    if f.mode == want {
        Ok(StateVerdict::Keep)
    } else {
        Ok(StateVerdict::Chmod {
            from: f.mode,
            to: want,
        })
    }
}

/// Why a path could not be judged trusted.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Untrusted(Untrusted),
    /// The facts could not be read (e.g. a directory on the way cannot be searched).
    #[error("cannot check {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CheckError + '_ {
    move |source| CheckError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether an error means the path (or a directory on its way) does not exist.
fn missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Checks what leads to `path` for `side`: every symbolic link on the way as given
/// (including `path` itself) must belong to the expected user or root, and every directory
/// above its real location must pass [`judge_dir`]. `path` itself is not judged (that is
/// the caller's, by what it is for). Returns its real path, or `None` when it does not exist.
pub fn check_above(
    path: &Path,
    subject: Subject,
    side: Side,
) -> Result<Option<PathBuf>, CheckError> {
    let refuse = |problem| {
        CheckError::Untrusted(Untrusted {
            subject,
            path: path.to_path_buf(),
            side,
            problem,
        })
    };
    let abs = std::path::absolute(path).map_err(io_error(path))?;
    for prefix in abs.ancestors() {
        let meta = match std::fs::symlink_metadata(prefix) {
            Ok(m) => m,
            Err(e) if missing(&e) => return Ok(None),
            Err(e) => return Err(io_error(prefix)(e)),
        };
        if meta.file_type().is_symlink() && !side.trusts(meta.uid()) {
            return Err(refuse(Problem::Link {
                link: prefix.to_path_buf(),
                owner: meta.uid(),
            }));
        }
    }
    let real = match std::fs::canonicalize(&abs) {
        Ok(r) => r,
        Err(e) if missing(&e) => return Ok(None),
        Err(e) => return Err(io_error(&abs)(e)),
    };
    // Looked up at most once, and only if some ancestor is group-writable.
    let private_gid = std::cell::OnceCell::new();
    for parent in real.ancestors().skip(1) {
        let meta = std::fs::metadata(parent).map_err(io_error(parent))?;
        let facts = Facts::of(&meta);
        let gid = private_group_for(facts, || {
            *private_gid.get_or_init(|| private_group(side.uid()))
        });
        match judge_dir(facts, side, gid) {
            Ok(()) => {}
            Err(Problem::Owner { owner }) => {
                return Err(refuse(Problem::ParentOwner {
                    parent: parent.to_path_buf(),
                    owner,
                }));
            }
            Err(Problem::Writable { mode, bits }) => {
                return Err(refuse(Problem::ParentWritable {
                    parent: parent.to_path_buf(),
                    mode,
                    bits,
                }));
            }
            Err(problem) => return Err(refuse(problem)),
        }
    }
    Ok(Some(real))
}

/// Checks a directory that holds (or will hold) the socket: what leads to it
/// ([`check_above`]) and the directory itself ([`judge_dir`]). Returns its real path, or
/// `None` when it does not exist.
pub fn check_socket_dir(dir: &Path, side: Side) -> Result<Option<PathBuf>, CheckError> {
    let Some(real) = check_above(dir, Subject::SocketDir, side)? else {
        return Ok(None);
    };
    let meta = std::fs::metadata(&real).map_err(io_error(&real))?;
    let facts = Facts::of(&meta);
    judge_dir(
        facts,
        side,
        private_group_for(facts, || private_group(side.uid())),
    )
    .map_err(|problem| {
        CheckError::Untrusted(Untrusted {
            subject: Subject::SocketDir,
            path: dir.to_path_buf(),
            side,
            problem,
        })
    })?;
    Ok(Some(real))
}

/// The directory holding `socket` (`.` for a bare file name).
pub fn socket_dir(socket: &Path) -> &Path {
    match socket.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Checks the socket a client is about to connect to, and its directory: see the module
/// documentation. A socket (or directory) that does not exist passes: connecting says so.
pub fn check_socket(socket: &Path, side: Side) -> Result<(), CheckError> {
    let Some(real_dir) = check_socket_dir(socket_dir(socket), side)? else {
        return Ok(());
    };
    let Some(name) = socket.file_name() else {
        return Ok(());
    };
    let path = real_dir.join(name);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if missing(&e) => return Ok(()),
        Err(e) => return Err(io_error(&path)(e)),
    };
    let refuse = |problem| {
        CheckError::Untrusted(Untrusted {
            subject: Subject::Socket,
            path: socket.to_path_buf(),
            side,
            problem,
        })
    };
    let facts = Facts::of(&meta);
    match judge_socket(facts, side) {
        Ok(()) => {}
        Err(Problem::Link { owner, .. }) => {
            return Err(refuse(Problem::Link { link: path, owner }));
        }
        Err(problem) => return Err(refuse(problem)),
    }
    if facts.kind == Kind::Symlink {
        // A trusted link: the socket it leads to must pass the same checks.
        let target = match std::fs::canonicalize(&path) {
            Ok(t) => t,
            Err(e) if missing(&e) => return Ok(()),
            Err(e) => return Err(io_error(&path)(e)),
        };
        return check_socket(&target, side).map_err(|e| match e {
            CheckError::Untrusted(u) => CheckError::Untrusted(Untrusted {
                path: socket.to_path_buf(),
                ..u
            }),
            other => other,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(uid: u32, mode: u32) -> Facts {
        Facts {
            kind: Kind::Dir,
            uid,
            gid: uid,
            mode,
        }
    }

    const ME: u32 = 1000;

    #[test]
    fn the_system_socket_serves_users_without_their_own() {
        let own = Path::new("/run/user/1000/orch/orchd.sock");
        let pick = |flag: Option<&str>, env: Option<&str>, own_exists, system_exists| {
            choose_socket(
                flag.map(PathBuf::from),
                env.map(PathBuf::from),
                own,
                own_exists,
                system_exists,
            )
        };
        let sys = PathBuf::from(SYSTEM_SOCKET);
        assert_eq!(
            pick(None, None, false, true),
            (sys.clone(), SocketOrigin::System)
        );
        assert_eq!(
            pick(None, None, true, true),
            (own.to_path_buf(), SocketOrigin::Own)
        );
        assert_eq!(
            pick(None, None, false, false),
            (own.to_path_buf(), SocketOrigin::Own)
        );
        assert_eq!(
            pick(Some("/x.sock"), Some("/y.sock"), false, true),
            (PathBuf::from("/x.sock"), SocketOrigin::Flag)
        );
        assert_eq!(
            pick(None, Some("/y.sock"), false, true),
            (PathBuf::from("/y.sock"), SocketOrigin::Env)
        );
        // Root's own default is the system socket.
        assert_eq!(
            choose_socket(None, None, &sys, false, true),
            (sys.clone(), SocketOrigin::Own)
        );
    }
    const OTHER: u32 = 1001;

    #[test]
    fn a_directory_is_trusted_when_only_its_user_or_root_can_change_it() {
        let me = Side::Client(ME);
        // The caller's own private directory, tmux-style.
        assert_eq!(judge_dir(dir(ME, 0o700), me, None), Ok(()));
        // Readable by others is fine: only writing lets them replace the socket.
        assert_eq!(judge_dir(dir(ME, 0o755), me, None), Ok(()));
        // The system daemon's /run/orch: root's, group orch may enter.
        assert_eq!(judge_dir(dir(ROOT, 0o750), me, None), Ok(()));
        // /tmp: world-writable but sticky.
        assert_eq!(judge_dir(dir(ROOT, 0o1777), me, None), Ok(()));
        assert_eq!(judge_dir(dir(ME, 0o1770), me, None), Ok(()));
    }

    #[test]
    fn a_directory_of_another_user_is_refused_whatever_its_mode() {
        for mode in [0o700, 0o755, 0o1777] {
            assert_eq!(
                judge_dir(dir(OTHER, mode), Side::Client(ME), None),
                Err(Problem::Owner { owner: OTHER }),
                "{mode:o}"
            );
        }
        // Root trusts nobody but root.
        assert_eq!(
            judge_dir(dir(ME, 0o700), Side::Daemon(ROOT), None),
            Err(Problem::Owner { owner: ME })
        );
    }

    #[test]
    fn a_directory_others_can_write_is_refused_unless_sticky() {
        for mode in [0o777, 0o770, 0o775, 0o722, 0o702, 0o2770] {
            let bits = mode & 0o022;
            assert_eq!(
                judge_dir(dir(ME, mode), Side::Client(ME), None),
                Err(Problem::Writable { mode, bits }),
                "{mode:o}"
            );
            assert_eq!(
                judge_dir(dir(ROOT, mode), Side::Daemon(ROOT), None),
                Err(Problem::Writable { mode, bits }),
                "{mode:o}"
            );
        }
        let bits = |mode| others_write_bits(dir(ME, mode), None);
        assert_eq!(bits(0o1777), 0);
        assert_eq!(bits(0o755), 0);
        assert_eq!(bits(0o4777), 0o022);
    }

    #[test]
    fn private_group_is_looked_up_only_where_it_can_change_the_judgment() {
        // Not group-writable, or sticky: no lookup, and the judgment is the same as with
        // any private group.
        for mode in [0o755, 0o700, 0o1777, 0o1775] {
            let f = Facts {
                gid: 5000,
                ..dir(ME, mode)
            };
            assert_eq!(
                private_group_for(f, || private_group(ME)),
                None,
                "mode {mode:o}"
            );
            assert_eq!(
                judge_dir(f, Side::Client(ME), None),
                judge_dir(f, Side::Client(ME), Some(5000)),
                "mode {mode:o}"
            );
        }
        // Group-writable and not sticky: the real lookup (root's primary group here).
        let f = dir(ME, 0o775);
        assert_eq!(private_group_for(f, || private_group(0)), private_group(0));
    }

    #[test]
    fn the_users_private_group_may_write() {
        // ~/.local made under umask 002 with user private groups: group `me`, nobody else in it.
        let mine = Facts {
            gid: 5000,
            ..dir(ME, 0o775)
        };
        assert_eq!(judge_dir(mine, Side::Client(ME), Some(5000)), Ok(()));
        // A group that is not the user's private one, or world write, is still refused.
        assert_eq!(
            judge_dir(mine, Side::Client(ME), Some(5001)),
            Err(Problem::Writable {
                mode: 0o775,
                bits: 0o020
            })
        );
        assert_eq!(
            judge_dir(
                Facts {
                    mode: 0o777,
                    ..mine
                },
                Side::Client(ME),
                Some(5000)
            ),
            Err(Problem::Writable {
                mode: 0o777,
                bits: 0o002
            })
        );
    }

    #[test]
    fn only_a_directory_is_a_socket_directory() {
        let f = Facts {
            kind: Kind::File,
            uid: ME,
            gid: ME,
            mode: 0o600,
        };
        assert_eq!(
            judge_dir(f, Side::Client(ME), None),
            Err(Problem::Kind {
                found: Kind::File,
                wanted: Kind::Dir
            })
        );
    }

    #[test]
    fn a_socket_is_trusted_when_its_user_or_root_owns_it() {
        let sock = |uid| Facts {
            kind: Kind::Socket,
            uid,
            gid: uid,
            mode: 0o660,
        };
        assert_eq!(judge_socket(sock(ME), Side::Client(ME)), Ok(()));
        // The system socket (root:orch 0660) is accepted by anyone.
        assert_eq!(judge_socket(sock(ROOT), Side::Client(OTHER)), Ok(()));
        assert_eq!(
            judge_socket(sock(OTHER), Side::Client(ME)),
            Err(Problem::Owner { owner: OTHER })
        );
        assert_eq!(
            judge_socket(sock(ME), Side::Client(ROOT)),
            Err(Problem::Owner { owner: ME })
        );
        let link = Facts {
            kind: Kind::Symlink,
            uid: OTHER,
            gid: OTHER,
            mode: 0o777,
        };
        assert!(matches!(
            judge_socket(link, Side::Client(ME)),
            Err(Problem::Link { owner: OTHER, .. })
        ));
    }

    #[test]
    fn the_serving_process_must_run_as_the_user_or_root() {
        assert_eq!(judge_peer(ME, Some(7), Side::Client(ME)), Ok(()));
        assert_eq!(judge_peer(ROOT, Some(7), Side::Client(ME)), Ok(()));
        assert_eq!(
            judge_peer(OTHER, Some(7), Side::Client(ME)),
            Err(Problem::Peer {
                pid: Some(7),
                uid: OTHER
            })
        );
    }

    #[test]
    fn a_state_directory_is_tightened_when_owned_and_refused_otherwise() {
        assert_eq!(
            judge_state_dir(dir(ME, 0o700), ME, 0o700),
            Ok(StateVerdict::Keep)
        );
        assert_eq!(
            judge_state_dir(dir(ME, 0o755), ME, 0o700),
            Ok(StateVerdict::Chmod {
                from: 0o755,
                to: 0o700
            })
        );
        assert_eq!(
            judge_state_dir(dir(ME, 0o1777), ME, 0o700),
            Ok(StateVerdict::Chmod {
                from: 0o1777,
                to: 0o700
            })
        );
        // A root daemon's: traversable, so agents can reach the checkpoints handed to them.
        assert_eq!(
            judge_state_dir(dir(ROOT, 0o700), ROOT, 0o711),
            Ok(StateVerdict::Chmod {
                from: 0o700,
                to: 0o711
            })
        );
        // Someone else's: never changed, refused (root's too, for a user daemon).
        assert_eq!(
            judge_state_dir(dir(OTHER, 0o700), ME, 0o700),
            Err(Problem::Owner { owner: OTHER })
        );
        assert_eq!(
            judge_state_dir(dir(ROOT, 0o755), ME, 0o700),
            Err(Problem::Owner { owner: ROOT })
        );
        let file = Facts {
            kind: Kind::File,
            uid: ME,
            gid: ME,
            mode: 0o600,
        };
        assert!(matches!(
            judge_state_dir(file, ME, 0o700),
            Err(Problem::Kind { .. })
        ));
    }

    /// A uid no account has, so messages show it without a name.
    const NOBODY_KNOWN: u32 = 3_999_999_999;

    fn untrusted(subject: Subject, path: &str, side: Side, problem: Problem) -> String {
        Untrusted {
            subject,
            path: PathBuf::from(path),
            side,
            problem,
        }
        .to_string()
    }

    #[test]
    fn messages_say_what_where_why_and_what_to_do() {
        let me = NOBODY_KNOWN - 1;
        let squatted = untrusted(
            Subject::SocketDir,
            "/tmp/orch-1000",
            Side::Client(me),
            Problem::Owner {
                owner: NOBODY_KNOWN,
            },
        );
        assert_eq!(
            squatted,
            format!(
                "refusing socket directory /tmp/orch-1000: owned by uid {NOBODY_KNOWN}, not you \
                 (uid {me}) or root; someone may be impersonating orchd — remove it (its owner \
                 or root can) or set XDG_RUNTIME_DIR (or --socket / ORCH_SOCKET) to a socket of \
                 your own"
            )
        );
        let writable = untrusted(
            Subject::SocketDir,
            "/srv/x",
            Side::Client(ROOT),
            Problem::Writable {
                mode: 0o777,
                bits: 0o022,
            },
        );
        assert!(
            writable.starts_with(
                "refusing socket directory /srv/x: writable by its group and everyone (mode \
                 0777) and not sticky; anyone who can write there"
            ),
            "{writable}"
        );
        assert!(writable.contains("`chmod go-w /srv/x`"), "{writable}");
        let parent = untrusted(
            Subject::StateDir,
            "/srv/x/state",
            Side::Daemon(ROOT),
            Problem::ParentWritable {
                parent: PathBuf::from("/srv/x"),
                mode: 0o770,
                bits: 0o020,
            },
        );
        assert!(
            parent.starts_with(
                "refusing state directory /srv/x/state: the directory above it, /srv/x, is \
                 writable by its group (mode 0770) and not sticky; another user could swap"
            ),
            "{parent}"
        );
        let state = untrusted(
            Subject::StateDir,
            "/srv/s",
            Side::Daemon(me),
            Problem::Owner {
                owner: NOBODY_KNOWN,
            },
        );
        assert!(
            state.starts_with(&format!(
                "refusing state directory /srv/s: owned by uid {NOBODY_KNOWN}, not orchd's user \
                 (uid {me}); orchd keeps its store only in a directory its own user owns"
            )),
            "{state}"
        );
        let peer = untrusted(
            Subject::Socket,
            "/tmp/s.sock",
            Side::Client(ROOT),
            Problem::Peer {
                pid: Some(42),
                uid: NOBODY_KNOWN,
            },
        );
        assert!(
            peer.starts_with(&format!(
                "refusing socket /tmp/s.sock: the process serving it (pid 42) runs as uid \
                 {NOBODY_KNOWN}, not root; someone may be impersonating orchd"
            )),
            "{peer}"
        );
        let daemon = untrusted(
            Subject::SocketDir,
            "/tmp/x",
            Side::Daemon(ROOT),
            Problem::Owner {
                owner: NOBODY_KNOWN,
            },
        );
        assert!(
            daemon.contains("orchd never changes a directory it did not create"),
            "{daemon}"
        );
    }

    #[test]
    fn real_directories_are_checked_up_to_the_root() {
        let me = Side::Client(effective_uid());
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("base");
        std::fs::create_dir(&base).expect("mkdir");
        use std::os::unix::fs::PermissionsExt;
        let chmod = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
        };
        chmod(&base, 0o700);
        let sock_dir = base.join("run");
        // Missing: nothing to refuse yet.
        assert!(matches!(check_socket_dir(&sock_dir, me), Ok(None)));
        assert!(check_socket(&sock_dir.join("orchd.sock"), me).is_ok());
        std::fs::create_dir(&sock_dir).expect("mkdir");
        chmod(&sock_dir, 0o700);
        let real = check_socket_dir(&sock_dir, me).expect("trusted");
        assert_eq!(real, Some(std::fs::canonicalize(&sock_dir).expect("real")));
        // Loose itself.
        chmod(&sock_dir, 0o777);
        let e = check_socket_dir(&sock_dir, me).expect_err("writable");
        assert!(
            matches!(&e, CheckError::Untrusted(u) if matches!(u.problem, Problem::Writable { mode: 0o777, bits } if bits & 0o002 != 0)),
            "{e}"
        );
        chmod(&sock_dir, 0o1777);
        assert!(check_socket_dir(&sock_dir, me).is_ok());
        chmod(&sock_dir, 0o700);
        // Loose above it.
        chmod(&base, 0o777);
        let e = check_socket(&sock_dir.join("orchd.sock"), me).expect_err("parent writable");
        assert!(
            matches!(&e, CheckError::Untrusted(u) if matches!(&u.problem,
                Problem::ParentWritable { parent, mode: 0o777, .. } if *parent == std::fs::canonicalize(&base).expect("real"))),
            "{e}"
        );
        chmod(&base, 0o700);
        // Through a link of our own: judged where it leads.
        let link = base.join("link");
        std::os::unix::fs::symlink(&sock_dir, &link).expect("symlink");
        assert!(check_socket(&link.join("orchd.sock"), me).is_ok());
        // A socket of our own passes; a relative path is judged from the working directory.
        let sock = sock_dir.join("orchd.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        assert!(check_socket(&sock, me).is_ok());
        assert!(check_socket(&link.join("orchd.sock"), me).is_ok());
        // Seen by someone else (who trusts neither us nor, here, our files).
        if effective_uid() != ROOT {
            let other = Side::Client(ROOT);
            assert!(check_socket(&sock, other).is_err());
        }
    }
}

/// Where the cgroup v2 (unified) hierarchy is mounted, from /proc/self/mountinfo: not
/// always /sys/fs/cgroup (a hybrid host has it at /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_mount_in(&info)
}

/// [`cgroup2_mount`] over the text of a mountinfo file.
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

#[cfg(test)]
mod cgroup_mount_tests {
    use super::*;

    #[test]
    fn the_unified_hierarchy_is_found_wherever_it_is_mounted() {
        let hybrid = "25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v1_only = "25 30 0:22 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup2_mount_in(v1_only), None);
    }
}
