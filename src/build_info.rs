//! What this binary is: its version, the git commit it was built from and
//! whether it is the profile-guided build (`bench/pgo.sh`), as `build.rs`
//! recorded them. Shown by `--version` and written into drill reports.

/// The crate version, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Short git commit of the build, or `unknown` outside a git checkout.
pub const COMMIT: &str = env!("STAMPGATE_GIT_COMMIT");

/// `pgo` for the profile-guided build of `bench/pgo.sh`, else `plain`.
pub const BUILD_KIND: &str = env!("STAMPGATE_BUILD_KIND");

/// `--version`'s text after the program name:
/// `0.1.0 (commit 1a2b3c4d5e, pgo build)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("STAMPGATE_GIT_COMMIT"),
    ", ",
    env!("STAMPGATE_BUILD_KIND"),
    " build)"
);

/// Whether this is the profile-guided build.
pub fn is_pgo() -> bool {
    BUILD_KIND == "pgo"
}
