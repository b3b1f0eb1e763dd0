//! Records the git commit the binary is built from (for
//! `chatgw_build_info` and `chatgw --version`): `CHATGW_GIT_COMMIT` from
//! the environment when set (container builds without `.git`), else `git`,
//! else "unknown".

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=CHATGW_GIT_COMMIT");
    // HEAD and the current branch's ref, where git keeps them: `.git` is a
    // file in a worktree or a submodule, and watching a path that does not
    // exist reruns this script, and rebuilds the crate, on every build. Only
    // this branch: a commit on another branch (or worktree) changes nothing.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for p in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        if let Some(path) = git(&["rev-parse", "--git-path", p]).filter(|path| Path::new(path).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("CHATGW_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    println!("cargo:rustc-env=CHATGW_GIT_COMMIT={}", commit.unwrap_or_else(|| "unknown".into()));
}
