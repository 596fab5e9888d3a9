//! Starting an agent without copying the daemon: `clone3(CLONE_VM | CLONE_VFORK)` on a
//! private stack, like `posix_spawn`, so the cost of a spawn does not grow with the
//! daemon's memory (no page-table copy, no copy-on-write faults afterwards), and with the
//! cgroup backend `CLONE_INTO_CGROUP` creates the child in its leaf (no migration, which
//! waits for the cgroup threadgroup lock). The child runs [`child_pre_exec`] (only raw,
//! async-signal-safe system calls on data prepared here) and `execve`; an error before
//! the exec is handed back through memory the two share. Where `clone3` is missing (old
//! kernels, other architectures) the spawn falls back to `std::process::Command` with the
//! same `pre_exec` hook (a fork).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::child::{ChildSetup, child_pre_exec};

/// What to start.
pub struct SpawnSpec<'a> {
    pub argv: &'a [String],
    /// The agent's complete environment (also the `PATH` the program is looked up on).
    pub env: &'a [(String, String)],
    /// A pipe to the child's stdin (else `/dev/null`).
    pub stdin_pipe: bool,
    pub setup: ChildSetup,
    /// The cgroup leaf the child starts in (cgroup backend).
    pub cgroup: Option<&'a Path>,
}

/// A started child: its pid and the parent's ends of its pipes.
pub struct Spawned {
    pub pid: u32,
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Whether the child was started without a fork (`clone3`), for the log.
    pub vfork: bool,
}

/// Starts `spec`. The error is the child's (or the spawn's) OS error: not found, not
/// executable, or a workdir error as [`super::workdir_error`] reads it.
pub fn spawn(mut spec: SpawnSpec<'_>) -> io::Result<Spawned> {
    #[cfg(target_arch = "x86_64")]
    {
        match clone3::spawn(&mut spec) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
            other => return other,
        }
    }
    spawn_std(spec)
}

/// What to start with descriptors of the caller's: the shim of an attempt.
pub struct FdSpawn<'a> {
    /// The program (run as is, not looked up on `PATH`).
    pub program: &'a Path,
    /// `argv`, its first element included (the name the process shows).
    pub argv: &'a [OsString],
    /// Descriptors 0, 1 and 2 of the child.
    pub stdio: [RawFd; 3],
    /// Handed to the child as descriptor 3, inheritable (every other descriptor of the
    /// caller is closed on exec).
    pub fd3: RawFd,
}

/// Starts `spec` in a session of its own, with the caller's environment and the umask
/// orchd was started with ([`child_pre_exec`]), without copying the daemon (`clone3` as
/// [`spawn`]; a fork where that is missing). Returns the child's pid; the caller reaps it.
pub fn spawn_with_fds(spec: &FdSpawn<'_>) -> io::Result<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        match clone3::spawn_with_fds(spec) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
            other => return other,
        }
    }
    spawn_with_fds_std(spec)
}

fn spawn_with_fds_std(spec: &FdSpawn<'_>) -> io::Result<u32> {
    use std::os::unix::process::CommandExt;
    let (stdio, fd3) = (spec.stdio, spec.fd3);
    let mut cmd = std::process::Command::new(spec.program);
    if let Some(first) = spec.argv.first() {
        cmd.arg0(first);
    }
    cmd.args(spec.argv.iter().skip(1));
    let setup = ChildSetup::default();
    // SAFETY: dup2, fcntl and child_pre_exec are async-signal-safe; the data was
    // prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            place_stdio(&stdio)?;
            child_pre_exec(&setup)?;
            place_fd3(fd3)
        });
    }
    let child = cmd.spawn()?;
    Ok(child.id())
}

/// In the child: `fds` become 0, 1 and 2. Only async-signal-safe calls.
fn place_stdio(fds: &[RawFd; 3]) -> io::Result<()> {
    for (target, &fd) in fds.iter().enumerate() {
        inherit_as(fd, target as RawFd)?;
    }
    Ok(())
}

/// In the child, after [`child_pre_exec`] marked every descriptor from 3 up close-on-exec:
/// `fd` becomes descriptor 3, inherited by the program.
fn place_fd3(fd: RawFd) -> io::Result<()> {
    inherit_as(fd, 3)
}

/// Between fork (or clone) and exec: `fd` becomes descriptor `target`, inherited by the
/// program (dup2's copy is not close-on-exec; the same number only loses the flag). Only
/// async-signal-safe calls.
pub(super) fn inherit_as(fd: RawFd, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2/fcntl on descriptors the caller opened for the child.
    let ok = unsafe {
        if fd == target {
            libc::fcntl(fd, libc::F_SETFD, 0) == 0
        } else {
            libc::dup2(fd, target) == target
        }
    };
    if ok {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The portable path: `std::process::Command` with the same pre-exec hook (a fork).
fn spawn_std(spec: SpawnSpec<'_>) -> io::Result<Spawned> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let Some(program) = spec.argv.first() else {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    };
    let mut setup = spec.setup;
    if let Some(c) = spec.cgroup {
        setup.cgroup_procs =
            CString::new(c.join("cgroup.procs").into_os_string().into_encoded_bytes()).ok();
    }
    let mut cmd = std::process::Command::new(program);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.stdin_pipe {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: child_pre_exec only makes async-signal-safe calls on data prepared before fork.
    unsafe {
        cmd.pre_exec(move || child_pre_exec(&setup));
    }
    let mut child = cmd.spawn()?;
    let pipe = |p: Option<OwnedFd>| p.ok_or_else(|| io::Error::other("no pipe to the child"));
    Ok(Spawned {
        pid: child.id(),
        stdin: child.stdin.take().map(OwnedFd::from),
        stdout: pipe(child.stdout.take().map(OwnedFd::from))?,
        stderr: pipe(child.stderr.take().map(OwnedFd::from))?,
        vfork: false,
    })
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the command"))
}

/// The paths `execve` is tried on, in order, as `execvp` would (`PATH` of the agent's
/// environment, else the daemon's, else the default one).
fn candidates(program: &str, env: &[(String, String)]) -> io::Result<Vec<CString>> {
    if program.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    if program.contains('/') {
        return Ok(vec![cstring(OsStr::new(program))?]);
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    path.split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            cstring(OsStr::new(&format!("{dir}/{program}")))
        })
        .collect()
}

/// A pipe whose both ends are close-on-exec: `(read, write)`.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn open_cloexec(path: &std::ffi::CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: open with a NUL-terminated path; the fd is owned by the result.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(target_arch = "x86_64")]
mod clone3 {
    use super::*;
    use std::sync::atomic::{AtomicI32, Ordering};

    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    const STACK: usize = 256 * 1024;

    /// The kernel's `struct clone_args` (version 2, with `cgroup`).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }

    /// Everything the child reads, prepared before the clone; `error` is what it writes.
    struct Ctx {
        stdio: [libc::c_int; 3],
        /// Made descriptor 3 after the setup (-1: none).
        fd3: libc::c_int,
        setup: ChildSetup,
        paths: Vec<CString>,
        argv: Vec<*const libc::c_char>,
        envp: Vec<*const libc::c_char>,
        error: AtomicI32,
    }

    /// A private stack for the child, unmapped on drop (after the child exec'd or exited).
    struct Stack(*mut libc::c_void);

    impl Stack {
        fn new() -> io::Result<Stack> {
            // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    STACK,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            // A guard page at the bottom: an overflow faults instead of writing elsewhere.
            // SAFETY: the first page of the mapping just made.
            unsafe { libc::mprotect(p, 4096, libc::PROT_NONE) };
            Ok(Stack(p))
        }
    }

    impl Drop for Stack {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`; the child no longer runs on it.
            unsafe { libc::munmap(self.0, STACK) };
        }
    }

    /// Runs in the child, on its own stack, sharing the daemon's memory until `execve`.
    /// Only raw system calls: no allocation, no lock, no glibc state (its `setuid` would
    /// signal the daemon's threads), and never returns into the daemon's code.
    extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `Ctx` the parent keeps alive (it is suspended until exec).
        let ctx = unsafe { &*(arg as *const Ctx) };
        if let Err(e) = place_stdio(&ctx.stdio) {
            return fail(ctx, e.raw_os_error());
        }
        // SAFETY: we are between clone and exec; child_pre_exec makes only
        // async-signal-safe calls on the prepared data.
        if let Err(e) = unsafe { child_pre_exec(&ctx.setup) } {
            return fail(ctx, e.raw_os_error());
        }
        if ctx.fd3 >= 0
            && let Err(e) = place_fd3(ctx.fd3)
        {
            return fail(ctx, e.raw_os_error());
        }
        let mut err = libc::ENOENT;
        for path in &ctx.paths {
            // SAFETY: NUL-terminated path and pointer arrays prepared before the clone.
            unsafe {
                libc::syscall(
                    libc::SYS_execve,
                    path.as_ptr(),
                    ctx.argv.as_ptr(),
                    ctx.envp.as_ptr(),
                )
            };
            let e = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            match e {
                // execvp's rules: keep looking, but a permission error wins over not found.
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => err = libc::EACCES,
                _ => {
                    err = e;
                    break;
                }
            }
        }
        fail(ctx, Some(err))
    }

    fn fail(ctx: &Ctx, code: Option<i32>) -> libc::c_int {
        ctx.error
            .store(code.unwrap_or(libc::EIO).max(1), Ordering::SeqCst);
        127
    }

    /// `clone3` that runs `f(arg)` on the new stack in the child and exits with its value;
    /// returns the child's pid (or `-errno`) in the parent.
    ///
    /// # Safety
    /// `args` must describe a valid stack; `f` must never return into shared state.
    unsafe fn clone3_run(
        args: &CloneArgs,
        f: extern "C" fn(*mut libc::c_void) -> libc::c_int,
        arg: *mut libc::c_void,
    ) -> libc::c_long {
        let ret: libc::c_long;
        // SAFETY: the child continues on the stack the kernel switched to, calls `f` and
        // exits without touching the parent's frame; the parent returns normally.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "xor ebp, ebp",
                "mov rdi, r12",
                "call r13",
                "mov edi, eax",
                "mov eax, 60",
                "syscall",
                "ud2",
                "2:",
                inlateout("rax") libc::SYS_clone3 => ret,
                in("rdi") args as *const CloneArgs,
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") arg,
                in("r13") f,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    pub(super) fn spawn(spec: &mut SpawnSpec<'_>) -> io::Result<Spawned> {
        let Some(program) = spec.argv.first() else {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        };
        let paths = candidates(program, spec.env)?;
        let argv_c = spec
            .argv
            .iter()
            .map(|a| cstring(OsStr::new(a)))
            .collect::<io::Result<Vec<_>>>()?;
        let env_c = spec
            .env
            .iter()
            .map(|(k, v)| cstring(OsStr::new(&format!("{k}={v}"))))
            .collect::<io::Result<Vec<_>>>()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (in_parent, in_child) = if spec.stdin_pipe {
            let (r, w) = pipe()?;
            (Some(w), r)
        } else {
            (None, open_cloexec(c"/dev/null", libc::O_RDWR)?)
        };
        let mut ctx = Ctx {
            stdio: [in_child.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
            fd3: -1,
            setup: std::mem::take(&mut spec.setup),
            argv: ptrs(&argv_c),
            envp: ptrs(&env_c),
            paths,
            error: AtomicI32::new(0),
        };
        let started = run(&mut ctx, spec.cgroup);
        if matches!(&started, Err(e) if e.raw_os_error() == Some(libc::ENOSYS)) {
            spec.setup = ctx.setup;
        }
        let pid = started?;
        drop((argv_c, env_c));
        Ok(Spawned {
            pid,
            stdin: in_parent,
            stdout: out_r,
            stderr: err_r,
            vfork: true,
        })
    }

    /// The NULL-terminated array of pointers `execve` takes; `v` must outlive it.
    fn ptrs(v: &[CString]) -> Vec<*const libc::c_char> {
        v.iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    }

    /// The shim's start: see [`super::spawn_with_fds`].
    pub(super) fn spawn_with_fds(spec: &FdSpawn<'_>) -> io::Result<u32> {
        let path = cstring(spec.program.as_os_str())?;
        let argv_c = spec
            .argv
            .iter()
            .map(|a| cstring(a))
            .collect::<io::Result<Vec<_>>>()?;
        let env_c = std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k;
                kv.push("=");
                kv.push(v);
                cstring(&kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut ctx = Ctx {
            stdio: spec.stdio,
            fd3: spec.fd3,
            setup: ChildSetup::default(),
            argv: ptrs(&argv_c),
            envp: ptrs(&env_c),
            paths: vec![path],
            error: AtomicI32::new(0),
        };
        let pid = run(&mut ctx, None);
        drop((argv_c, env_c));
        pid
    }

    /// Clones the child that runs `ctx` (in `cgroup` if given) and waits until it exec'd
    /// or failed; returns its pid, or its error (the failed child is reaped).
    fn run(ctx: &mut Ctx, cgroup: Option<&Path>) -> io::Result<u32> {
        let cgroup_fd = match cgroup {
            Some(c) => Some(open_cloexec(
                &cstring(c.as_os_str())?,
                libc::O_PATH | libc::O_DIRECTORY,
            )?),
            None => None,
        };
        let stack = Stack::new()?;
        let mut args = CloneArgs {
            flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.0 as u64,
            stack_size: STACK as u64,
            ..Default::default()
        };
        if let Some(fd) = &cgroup_fd {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = fd.as_raw_fd() as u64;
        }
        // No signal handler of the daemon may run in the child (it shares our memory):
        // everything is blocked across the clone; the child resets the dispositions to
        // default before it unblocks them (child_pre_exec).
        // SAFETY: sigset operations on locals; the old mask is restored below.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        let pid = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let ctx_ptr: *mut Ctx = ctx;
            let mut pid = clone3_run(&args, child_main, ctx_ptr.cast());
            if pid < 0 && cgroup_fd.is_some() && pid != -(libc::ENOSYS as libc::c_long) {
                // A leaf clone3 cannot start in (or a kernel without CLONE_INTO_CGROUP):
                // the child moves itself there instead.
                args.flags &= !CLONE_INTO_CGROUP;
                args.cgroup = 0;
                if let Some(c) = cgroup {
                    (*ctx_ptr).setup.cgroup_procs =
                        CString::new(c.join("cgroup.procs").into_os_string().into_encoded_bytes())
                            .ok();
                }
                pid = clone3_run(&args, child_main, ctx_ptr.cast());
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            pid
        };
        if pid < 0 {
            return Err(io::Error::from_raw_os_error(-pid as i32));
        }
        let pid = pid as u32;
        // The child exec'd or exited: it no longer uses the stack or the context.
        drop(stack);
        let code = ctx.error.load(Ordering::SeqCst);
        if code != 0 {
            let mut status = 0;
            // SAFETY: reaps our own child that already failed.
            unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
            return Err(io::Error::from_raw_os_error(code));
        }
        Ok(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn run(argv: &[&str], env: &[(&str, &str)]) -> io::Result<(Spawned, String)> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let s = spawn(SpawnSpec {
            argv: &argv,
            env: &env,
            stdin_pipe: false,
            setup: ChildSetup::default(),
            cgroup: None,
        })?;
        let mut out = String::new();
        let mut f = std::fs::File::from(s.stdout.try_clone()?);
        f.read_to_string(&mut out)?;
        let mut status = 0;
        // SAFETY: reaps the child this test started.
        unsafe { libc::waitpid(s.pid as libc::pid_t, &mut status, 0) };
        Ok((s, out))
    }

    #[test]
    fn runs_a_program_found_on_the_agents_path_with_only_its_environment() {
        let (s, out) = run(
            &["sh", "-c", "echo \"$A:$HOME\""],
            &[("PATH", "/nonexistent:/usr/bin:/bin"), ("A", "x")],
        )
        .expect("spawn sh");
        assert_eq!(out, "x:\n");
        assert!(s.pid > 0);
    }

    #[test]
    fn a_missing_program_is_not_found() {
        let e = run(&["no-such-program-orch"], &[("PATH", "/usr/bin:/bin")])
            .err()
            .expect("an error");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e = run(&["/nonexistent/x"], &[]).err().expect("an error");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_file_that_is_not_executable_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("plain");
        std::fs::write(&f, "#!/bin/sh\n").expect("write");
        let e = run(&[f.to_str().expect("utf-8")], &[])
            .err()
            .expect("an error");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    }

    fn hands_on_exactly_the_given_descriptors(start: fn(&FdSpawn<'_>) -> io::Result<u32>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::fs::File::create(dir.path().join("out")).expect("create");
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        let (r, w) = pipe().expect("pipe");
        // Open without close-on-exec: it must not reach the child all the same.
        // SAFETY: open with a static NUL-terminated path; the fd is owned below.
        let stray = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
        assert!(stray > 2, "open /dev/null");
        // SAFETY: just opened, owned by nobody else.
        let stray = unsafe { OwnedFd::from_raw_fd(stray) };
        let script = format!(
            "echo out; test -e /proc/self/fd/{} && echo leaked >&3; echo \"$0\" >&3; exec sleep 30",
            stray.as_raw_fd()
        );
        let argv: Vec<OsString> = vec!["named".into(), "-c".into(), script.into()];
        let stdio = [null.as_raw_fd(), out.as_raw_fd(), out.as_raw_fd()];
        let of = |program: &'static str, fd3: RawFd| {
            start(&FdSpawn {
                program: Path::new(program),
                argv: &argv,
                stdio,
                fd3,
            })
        };
        let pid = of("/bin/sh", w.as_raw_fd()).expect("spawn");
        drop(w);
        // The script's last line before it sleeps.
        let mut first = [0u8; 6];
        let mut f = std::fs::File::from(r);
        f.read_exact(&mut first).expect("read fd 3");
        assert_eq!(
            &first, b"named\n",
            "a descriptor without close-on-exec leaked"
        );
        // SAFETY: getsid reads the session of our own child.
        assert_eq!(
            unsafe { libc::getsid(pid as libc::pid_t) },
            pid as libc::pid_t
        );
        // SAFETY: kills and reaps our own child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        assert_eq!(
            super::super::wait_exit(pid).expect("reap"),
            128 + libc::SIGKILL
        );
        let text = std::fs::read_to_string(dir.path().join("out")).expect("read out");
        assert_eq!(text, "out\n");
        let missing = of("/nonexistent/orchd", null.as_raw_fd()).expect_err("an error");
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_start_with_given_descriptors_hands_on_exactly_those_in_a_session_of_its_own() {
        hands_on_exactly_the_given_descriptors(spawn_with_fds);
        // The fork path, where clone3 is missing.
        hands_on_exactly_the_given_descriptors(spawn_with_fds_std);
    }

    #[test]
    fn a_bad_workdir_is_told_apart() {
        let argv = vec!["true".to_string()];
        let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
        let e = spawn(SpawnSpec {
            argv: &argv,
            env: &env,
            stdin_pipe: true,
            setup: ChildSetup {
                workdir: CString::new("/nonexistent/dir").ok(),
                ..Default::default()
            },
            cgroup: None,
        })
        .err()
        .expect("an error");
        let w = super::super::workdir_error(&e).expect("a workdir error");
        assert_eq!(w.kind(), io::ErrorKind::NotFound);
    }
}
