//! A progress bar on stderr for long commands (`tenant add --from-csv`): redrawn in place
//! on a terminal, one line per step otherwise (a log file gets readable lines, not
//! carriage returns).

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    total: usize,
    what: &'static str,
    started: Instant,
    terminal: bool,
}

impl Progress {
    pub fn new(total: usize, what: &'static str) -> Self {
        Self {
            total,
            what,
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Shows that `done` of the total are done.
    pub fn set(&self, done: usize) {
        let line = self.line(done);
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(
                err,
                "\r{line}{}",
                if done >= self.total { "\n" } else { "" }
            )
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }

    fn line(&self, done: usize) -> String {
        const WIDTH: usize = 30;
        let filled = (done * WIDTH).checked_div(self.total).unwrap_or(WIDTH);
        format!(
            "[{}{}] {done}/{} {} ({:.1} s)",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled.min(WIDTH)),
            self.total,
            self.what,
            self.started.elapsed().as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_fills_with_the_share_done() {
        let p = Progress::new(1000, "tenants");
        assert!(p
            .line(500)
            .starts_with("[###############---------------] 500/1000 tenants"));
        assert!(p
            .line(1000)
            .starts_with(&format!("[{}] 1000/1000", "#".repeat(30))));
        assert!(Progress::new(0, "tenants")
            .line(0)
            .starts_with(&format!("[{}] 0/0", "#".repeat(30))));
    }
}
