//! Reading a checkpoint's files ahead of the copy into the model.
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` while a helper thread reads the second half of `ranges` (file, start, end) into
/// the OS page cache, so the disk serves two streams at once: `f` faulting in the first half
/// as it copies in order, the helper the second: a cold disk reads two streams faster than
/// one (figures: BENCHMARKS.md, `sd15-cpu`). The pages go to the page cache, not into this
/// process (no RSS). The helper stops when `f`
/// returns or panics.
pub fn read_ahead_while<R>(ranges: &[(PathBuf, u64, u64)], f: impl FnOnce() -> R) -> R {
    /// Tells the helper to stop however `f` ends.
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let done = AtomicBool::new(false);
    let total: u64 = ranges.iter().map(|(_, start, end)| end - start).sum();
    std::thread::scope(|scope| {
        let _stop = Stop(&done);
        if total > 2 * CHUNK {
            scope.spawn(|| read_from(ranges, total / 2, &done));
        }
        f()
    })
}

const CHUNK: u64 = 8 << 20;

/// Asks the OS to read `ranges` (file, start, end) into its page cache in the background
/// (`posix_fadvise(WILLNEED)` from a detached thread with its own file handles), for a model
/// whose parameters view the file (zero-copy loading): their first use then finds the pages
/// read in long requests instead of faulting them in a few at a time, in the order the forward
/// touches them (figures: BENCHMARKS.md, `load-cpu`). Nothing waits for it; the pages go to
/// the page cache, not into this process.
pub fn prefetch_in_background(ranges: Vec<(PathBuf, u64, u64)>) {
    if ranges.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("prefetch".into())
        .spawn(move || {
            for (path, start, end) in ranges {
                if let Ok(file) = File::open(&path) {
                    advise_willneed(&file, start, end - start);
                }
            }
        });
    if let Err(e) = spawned {
        log::debug!("no prefetch thread: {e}");
    }
}

#[cfg(target_os = "linux")]
fn advise_willneed(file: &File, start: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(start), Ok(len)) = (i64::try_from(start), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain advice on an open file descriptor owned by `file`.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), start, len, libc::POSIX_FADV_WILLNEED) };
}

#[cfg(not(target_os = "linux"))]
fn advise_willneed(_file: &File, _start: u64, _len: u64) {}

/// Reads `ranges` from `skip` bytes into their concatenation to the end, `CHUNK` at a time,
/// until `done`; returns the bytes read.
fn read_from(ranges: &[(PathBuf, u64, u64)], mut skip: u64, done: &AtomicBool) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut buffer = vec![0u8; CHUNK as usize];
    let mut total = 0;
    for (path, start, end) in ranges {
        let len = end - start;
        if skip >= len {
            skip -= len;
            continue;
        }
        let mut offset = start + skip;
        skip = 0;
        let Ok(file) = File::open(path) else { continue };
        while offset < *end && !done.load(Ordering::Relaxed) {
            let n = CHUNK.min(end - offset) as usize;
            match file.read_at(&mut buffer[..n], offset) {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    offset += read as u64;
                    total += read as u64;
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_reads_the_second_half_across_files_and_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, vec![1u8; 120]).unwrap();
        std::fs::write(&b, vec![2u8; 300]).unwrap();
        // Data sections: a[8..108) (100 bytes), b[0..300): 400 bytes, the second half 200.
        let ranges = vec![(a, 8, 108), (b, 0, 300)];
        assert_eq!(read_from(&ranges, 200, &AtomicBool::new(false)), 200);
        assert_eq!(read_from(&ranges, 50, &AtomicBool::new(false)), 350);
        assert_eq!(read_from(&ranges, 0, &AtomicBool::new(true)), 0);
        assert_eq!(read_ahead_while(&ranges, || 7), 7);
    }
}
