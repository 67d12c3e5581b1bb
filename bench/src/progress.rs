//! A progress line on stderr (turns done of turns asked), redrawn a few times a second while a
//! target runs; when stderr is not a terminal, one line per tenth.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Shared by every chat task of one target.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    label: String,
    total: u64,
    done: AtomicU64,
    finished: AtomicBool,
    started: Instant,
}

impl Progress {
    /// Starts drawing the line for `label`, `total` turns.
    pub fn start(label: &str, total: u64) -> Progress {
        let progress = Progress {
            inner: Arc::new(Inner {
                label: label.to_owned(),
                total: total.max(1),
                done: AtomicU64::new(0),
                finished: AtomicBool::new(false),
                started: Instant::now(),
            }),
        };
        let inner = progress.inner.clone();
        tokio::spawn(async move {
            let terminal = std::io::stderr().is_terminal();
            let mut last_tenth = 0;
            while !inner.finished.load(Ordering::Relaxed) {
                let done = inner.done.load(Ordering::Relaxed);
                if terminal {
                    eprint!("\r{}", inner.line(done));
                    let _ = std::io::stderr().flush();
                } else if done * 10 / inner.total > last_tenth {
                    last_tenth = done * 10 / inner.total;
                    eprintln!("{}", inner.line(done));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        progress
    }

    /// One more turn done.
    pub fn inc(&self) {
        self.inner.done.fetch_add(1, Ordering::Relaxed);
    }

    /// Stops drawing and leaves the final line.
    pub fn finish(&self) {
        self.inner.finished.store(true, Ordering::Relaxed);
        let done = self.inner.done.load(Ordering::Relaxed);
        if std::io::stderr().is_terminal() {
            eprintln!("\r{}", self.inner.line(done));
        } else {
            eprintln!("{}", self.inner.line(done));
        }
    }
}

impl Inner {
    fn line(&self, done: u64) -> String {
        const WIDTH: u64 = 30;
        let filled = (done * WIDTH / self.total).min(WIDTH) as usize;
        format!(
            "{:>10} [{}{}] {done}/{} turns, {:.1} s",
            self.label,
            "#".repeat(filled),
            ".".repeat(WIDTH as usize - filled),
            self.total,
            self.started.elapsed().as_secs_f64()
        )
    }
}
