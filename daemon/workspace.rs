//! Private workspaces of steps (`workspace = "worktree"` or `"scratch"`): the git work
//! and directories the executor side carries out for the engine. Git runs as the user
//! who submitted the objective, in their repository, with their environment (so their
//! identity), never through a shell. Blocking: callers run it off the async threads.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::model::{Branch, RepoBase};

/// Who runs git, and with which environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Runner {
    /// `(uid, gid)`: a root daemon runs git as the objective's owner.
    pub run_as: Option<(u32, u32)>,
    /// The attempt's environment (`HOME`, `PATH`, ...).
    pub env: Vec<(String, String)>,
}

impl Runner {
    /// Runs `git ARGS` in `dir`; its trimmed stdout, or an error naming the command and
    /// what git said.
    fn git(&self, dir: &Path, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("git");
        cmd.current_dir(dir).args(args);
        if !self.env.is_empty() {
            cmd.env_clear().envs(self.env.iter().map(|(k, v)| (k, v)));
        }
        cmd.env("GIT_TERMINAL_PROMPT", "0");
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run git {}: {e}", args.join(" ")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let said = err.trim().lines().last().unwrap_or("").to_string();
            return Err(format!("git {} failed: {said}", args.join(" ")));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn rev(&self, dir: &Path, rev: &str) -> Result<String, String> {
        self.git(
            dir,
            &["rev-parse", "--verify", "-q", &format!("{rev}^{{commit}}")],
        )
    }

    /// Makes `dir` (given to the user git runs as) and the directories above it up to
    /// `top` (made traversable, not listable, for that user).
    fn make_dir(&self, top: &Path, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::fs::PermissionsExt;
            for above in dir.ancestors().skip(1) {
                if !above.starts_with(top) {
                    break;
                }
                std::fs::set_permissions(above, std::fs::Permissions::from_mode(0o711))
                    .map_err(|e| format!("cannot make {} traversable: {e}", above.display()))?;
            }
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .map_err(|e| format!("cannot give {} to uid {uid}: {e}", dir.display()))?;
        }
        Ok(())
    }
}

/// The repository `workdir` is in and the commit its `HEAD` is at (read on submit, by the
/// daemon: it only reads, whoever owns the repository).
pub fn repo_base(workdir: &Path) -> Result<RepoBase, String> {
    let git = Runner::default();
    let read = |args: &[&str]| {
        let mut all = vec!["-c", "safe.directory=*"];
        all.extend_from_slice(args);
        git.git(workdir, &all)
    };
    if !workdir.is_dir() {
        return Err(format!("{} is not a directory", workdir.display()));
    }
    let root = read(&["rev-parse", "--show-toplevel"])
        .map_err(|_| format!("{} is not inside a git repository", workdir.display()))?;
    let subdir = read(&["rev-parse", "--show-prefix"])?;
    let base = read(&["rev-parse", "--verify", "-q", "HEAD^{commit}"])
        .map_err(|_| format!("the repository {root} has no commit yet"))?;
    Ok(RepoBase {
        root,
        subdir: subdir.trim_end_matches('/').to_string(),
        base,
    })
}

/// The branch of a `worktree` step: `orch/<short objective id>/<step id>`.
pub fn branch_name(objective_id: &str, step_id: &str) -> String {
    let short: String = objective_id.chars().take(10).collect();
    format!("orch/{}/{step_id}", short.to_lowercase())
}

/// Where a step's worktree or scratch directory lives under the state directory.
pub fn workspace_dir(state_dir: &Path, kind: &str, objective_id: &str, step_id: &str) -> PathBuf {
    state_dir.join(kind).join(objective_id).join(step_id)
}

/// What to make before an attempt starts (one per attempt: its size does not matter).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Prep {
    Scratch {
        /// The state directory's `scratch/`.
        top: PathBuf,
        path: PathBuf,
    },
    Worktree {
        /// The state directory's `worktrees/`.
        top: PathBuf,
        repo: RepoBase,
        path: PathBuf,
        branch: String,
        /// The branches of the worktree steps it needs: none (start from the recorded
        /// base), one (start from it) or several (merged).
        from: Vec<String>,
        /// The branch as an earlier attempt left it (a retry continues there).
        known: Option<Branch>,
        /// The message of the commit of what the agent left uncommitted.
        message: String,
    },
}

/// What was made: the attempt's working directory, and a worktree's branch.
#[derive(Debug, Clone, PartialEq)]
pub struct Made {
    pub workdir: PathBuf,
    pub branch: Option<Branch>,
}

/// Makes the workspace (or finds the one an earlier attempt made).
pub fn prepare(prep: &Prep, git: &Runner) -> Result<Made, String> {
    match prep {
        Prep::Scratch { top, path } => {
            git.make_dir(top, path)?;
            Ok(Made {
                workdir: path.clone(),
                branch: None,
            })
        }
        Prep::Worktree {
            top,
            repo,
            path,
            branch,
            from,
            known,
            ..
        } => {
            let root = Path::new(&repo.root);
            let workdir = path.join(&repo.subdir);
            if path.join(".git").exists() {
                let head = git.rev(path, "HEAD")?;
                let base = known
                    .as_ref()
                    .map_or_else(|| repo.base.clone(), |b| b.base.clone());
                return Ok(Made {
                    workdir,
                    branch: Some(Branch {
                        name: branch.clone(),
                        base,
                        head,
                    }),
                });
            }
            if let Some(parent) = path.parent() {
                git.make_dir(top, parent)?;
            }
            let path_text = path.display().to_string();
            if git.rev(root, &format!("refs/heads/{branch}")).is_ok() {
                // The branch outlived its worktree: continue on it.
                git.git(root, &["worktree", "add", &path_text, branch])?;
            } else {
                let start = from.first().map_or(repo.base.as_str(), String::as_str);
                git.git(root, &["worktree", "add", "-b", branch, &path_text, start])?;
                if from.len() > 1 {
                    merge(git, root, path, branch, &from[1..])?;
                }
            }
            let base = git.rev(path, "HEAD")?;
            Ok(Made {
                workdir,
                branch: Some(Branch {
                    name: branch.clone(),
                    head: base.clone(),
                    base,
                }),
            })
        }
    }
}

/// Merges `others` into the new worktree; a conflict removes the worktree and its branch
/// and names the conflicting paths.
fn merge(
    git: &Runner,
    root: &Path,
    path: &Path,
    branch: &str,
    others: &[String],
) -> Result<(), String> {
    let mut args = vec!["merge", "--no-edit", "-q", "-m"];
    let message = format!("orch: merge {} into {branch}", others.join(", "));
    args.push(&message);
    args.extend(others.iter().map(String::as_str));
    if git.git(path, &args).is_ok() {
        return Ok(());
    }
    let conflicts = git
        .git(path, &["diff", "--name-only", "--diff-filter=U"])
        .unwrap_or_default();
    let _ = git.git(path, &["merge", "--abort"]);
    let path_text = path.display().to_string();
    let _ = git.git(root, &["worktree", "remove", "--force", &path_text]);
    let _ = git.git(root, &["branch", "-D", branch]);
    let paths: Vec<&str> = conflicts.lines().filter(|l| !l.is_empty()).collect();
    Err(if paths.is_empty() {
        format!("cannot merge {} into {branch}", others.join(", "))
    } else {
        format!(
            "merge conflict between {} in: {}",
            others.join(", "),
            paths.join(", ")
        )
    })
}

/// Commits what the agent left uncommitted in the worktree; the branch's head.
pub fn commit_leftovers(path: &Path, message: &str, git: &Runner) -> Result<String, String> {
    let status = git.git(path, &["status", "--porcelain"])?;
    if !status.is_empty() {
        git.git(path, &["add", "-A"])?;
        git.git(path, &["commit", "-q", "--no-verify", "-m", message])?;
    }
    git.rev(path, "HEAD")
}

/// A worktree to remove with its objective.
#[derive(Debug, Clone, PartialEq)]
pub struct Leftover {
    pub root: String,
    pub path: PathBuf,
    pub branch: String,
    pub base: String,
}

/// Removes the worktree (the branch only when it has no commit of its own).
pub fn remove(l: &Leftover, git: &Runner) -> Result<(), String> {
    let root = Path::new(&l.root);
    let path_text = l.path.display().to_string();
    if l.path.exists() {
        git.git(root, &["worktree", "remove", "--force", &path_text])?;
    }
    let _ = git.git(root, &["worktree", "prune"]);
    let range = format!("{}..refs/heads/{}", l.base, l.branch);
    if git.git(root, &["rev-list", "--count", &range]).as_deref() == Ok("0") {
        git.git(root, &["branch", "-D", &l.branch])?;
    }
    Ok(())
}
