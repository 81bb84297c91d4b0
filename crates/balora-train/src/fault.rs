//! A pause point for the process-level fault tests (docs/reliability.md, "Fault tests").
//!
//! A test sets `BALORA_TEST_PAUSE_AT=<point>@<step>` (several, comma-separated); when the
//! trainer reaches that point of that step's checkpoint write it prints `balora: paused at <point>@<step>` to stderr and
//! stops itself with SIGSTOP. The test then kills it with SIGKILL (a crash at exactly that
//! instant) or changes the world (fills the disk) and lets it continue with SIGCONT. Without
//! the variable a pause point costs one comparison.

use std::sync::OnceLock;

/// The environment variable naming the pause point.
pub const PAUSE_ENV: &str = "BALORA_TEST_PAUSE_AT";

/// The checkpoint's tensors are written into its `.partial` folder, its state file is not.
pub const TENSORS_WRITTEN: &str = "checkpoint-tensors";
/// The checkpoint folder has its final name; `latest` still names the previous one.
pub const RENAMED: &str = "checkpoint-renamed";
/// The checkpoint is complete, `latest` names it and the superseded ones are gone.
pub const SAVED: &str = "checkpoint-saved";

/// Stop here if the test asked for `point` at `step`.
pub(crate) fn pause_point(point: &str, step: usize) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let Some(at) = AT.get_or_init(|| std::env::var(PAUSE_ENV).ok()) else {
        return;
    };
    let step = step.to_string();
    if at
        .split(',')
        .any(|p| p.split_once('@') == Some((point, step.as_str())))
    {
        eprintln!("balora: paused at {point}@{step}");
        #[cfg(unix)]
        // SAFETY: raise has no preconditions; SIGSTOP suspends this process until SIGCONT.
        unsafe {
            libc::raise(libc::SIGSTOP);
        }
    }
}
