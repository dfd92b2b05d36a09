//! Build script: stamps the binary with the git commit it was built from
//! and whether it is the profile-guided build, for `stampgate --version`
//! and the drill's reports (an operator comparing two edges, or a CI run
//! against a report, needs to know which code ran).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    // Set by bench/pgo.sh for its optimised build; nobody else sets it.
    println!("cargo:rerun-if-env-changed=STAMPGATE_PGO");
    let pgo = std::env::var("STAMPGATE_PGO").is_ok_and(|v| v == "1");
    println!(
        "cargo:rustc-env=STAMPGATE_BUILD_KIND={}",
        if pgo { "pgo" } else { "plain" }
    );

    // A build without .git (a container's build context) is told the
    // commit instead: deploy/Containerfile passes its GIT_COMMIT here.
    println!("cargo:rerun-if-env-changed=STAMPGATE_BUILD_COMMIT");
    let commit = std::env::var("STAMPGATE_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=10", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=STAMPGATE_GIT_COMMIT={commit}");

    // Rerun when HEAD moves: HEAD itself (a branch switch), the branch's
    // ref (a commit) and packed-refs (a gc). In a worktree these live in
    // different directories, so ask git where. Only paths that exist are
    // named: cargo reruns on every build for a missing one. Outside a git
    // checkout (a source tarball) the commit is "unknown" and only this
    // script's own changes matter.
    println!("cargo:rerun-if-changed=build.rs");
    let git_dir = git(&["rev-parse", "--git-dir"]).map(PathBuf::from);
    let common_dir = git(&["rev-parse", "--git-common-dir"]).map(PathBuf::from);
    let head_ref = git(&["rev-parse", "--symbolic-full-name", "HEAD"]);
    let mut watched = Vec::new();
    if let Some(dir) = &git_dir {
        watched.push(dir.join("HEAD"));
    }
    if let Some(dir) = common_dir.as_ref().or(git_dir.as_ref()) {
        if let Some(r) = head_ref.as_deref().filter(|r| r.starts_with("refs/")) {
            watched.push(dir.join(r));
        }
        watched.push(dir.join("packed-refs"));
    }
    for path in watched.iter().filter(|p| Path::exists(p)) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// One line of a git command's output, or `None` when git is missing, this
/// is not a checkout, or the command fails.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!line.is_empty()).then_some(line)
}
