//! A terminal progress bar for downloads (parts, bytes, throughput, ETA), and the status line
//! of commands that follow a job.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use indicatif::{ProgressBar, ProgressStyle};
use scoreland_ingest::{DownloadObserver, NoProgress};

struct Bar {
    bar: ProgressBar,
    batch: Mutex<String>,
    parts: AtomicUsize,
    done: AtomicUsize,
}

impl Bar {
    fn show(&self) {
        let batch = self.batch.lock().map(|b| b.clone()).unwrap_or_default();
        self.bar.set_message(format!(
            "batch {batch}: {}/{} parts",
            self.done.load(Ordering::Relaxed),
            self.parts.load(Ordering::Relaxed)
        ));
    }
}

impl DownloadObserver for Bar {
    fn on_start(&self, batch: &str, parts: usize, bytes: u64) {
        if let Ok(mut b) = self.batch.lock() {
            *b = batch.to_string();
        }
        self.parts.store(parts, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.bar.set_length(bytes);
        self.bar.set_position(0);
        self.show();
    }
    fn on_bytes(&self, n: u64) {
        self.bar.inc(n);
    }
    fn on_part_done(&self, _name: &str, _skipped: bool) {
        self.done.fetch_add(1, Ordering::Relaxed);
        self.show();
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// A progress bar on a terminal; nothing otherwise (logs carry the story).
pub fn observer(quiet: bool) -> Arc<dyn DownloadObserver> {
    if quiet || !std::io::stderr().is_terminal() {
        return Arc::new(NoProgress);
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    Arc::new(Bar {
        bar,
        batch: Mutex::new(String::new()),
        parts: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
    })
}

/// A status line rewritten in place on a terminal (nothing otherwise).
pub struct StatusLine {
    show: bool,
    shown: std::cell::Cell<bool>,
}

impl StatusLine {
    pub fn new(quiet: bool) -> Self {
        StatusLine {
            show: !quiet && std::io::stderr().is_terminal(),
            shown: Default::default(),
        }
    }
    pub fn show(&self, text: &str) {
        if self.show {
            eprint!("\r{text}\x1b[K");
            self.shown.set(true);
        }
    }
    pub fn end(&self) {
        if self.shown.get() {
            eprintln!();
        }
    }
}
