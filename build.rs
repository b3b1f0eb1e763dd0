//! Records the git commit the binary is built from (for
//! `chatgw_build_info` and `chatgw --version`): `CHATGW_GIT_COMMIT` from
//! the environment when set (container builds without `.git`), else `git`,
//! else "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CHATGW_GIT_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let commit = std::env::var("CHATGW_GIT_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    println!("cargo:rustc-env=CHATGW_GIT_COMMIT={}", commit.unwrap_or_else(|| "unknown".into()));
}
