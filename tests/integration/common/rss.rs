//! A child's peak resident memory, read from its own `wait4` (not the test process's other
//! children, which `getrusage(RUSAGE_CHILDREN)` would mix in).
use std::process::{Command, Stdio};

/// Runs `cmd` to its end with stdout/stderr captured: (exit code, stderr, peak RSS in MiB).
pub fn run_with_peak_rss(cmd: &mut Command) -> (Option<i32>, String, f64) {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 writes it for the child we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(got, pid, "wait4 failed");
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    // Linux reports ru_maxrss in KiB.
    (code, err, usage.ru_maxrss as f64 / 1024.0)
}
