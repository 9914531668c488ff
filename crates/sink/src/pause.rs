//! A test hook: `SCORELAND_PAUSE_AT=<point>:<file>` stops a run at that point, says so on
//! stderr, and waits (without blocking the runtime's other tasks) until `<file>` exists. The
//! end-to-end tests use it to interleave two processes exactly. Points: `lock_takeover` (a
//! stale lock found, not yet replaced), `before_commit` (every table ready, none committed),
//! `delta_commit` (one table's files uploaded and the version to commit on read, before the
//! commit itself: two runs paused there race for the same version).

use std::path::PathBuf;
use std::time::Duration;

pub fn pause_point(point: &str) {
    let Ok(spec) = std::env::var("SCORELAND_PAUSE_AT") else {
        return;
    };
    let Some((at, file)) = spec.split_once(':') else {
        return;
    };
    if at != point {
        return;
    }
    eprintln!("SCORELAND_PAUSE_AT={point}: paused until {file} exists");
    let file = PathBuf::from(file);
    tokio::task::block_in_place(|| {
        while !file.exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}
