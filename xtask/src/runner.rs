//! Runs a list of named steps in order: a header before each, its duration after, a summary
//! at the end, and a stop at the first failure.

use std::io::Write;
use std::time::{Duration, Instant};

/// Whether a step is skipped, and why.
#[derive(Clone, Copy, Debug)]
pub enum Skip {
    /// The step runs.
    No,
    /// The step is skipped for this reason (shown in the summary).
    Because(&'static str),
}

type Action<'a> = Box<dyn FnOnce() -> Result<(), String> + 'a>;

struct Step<'a> {
    name: &'static str,
    what: String,
    skip: Skip,
    action: Action<'a>,
}

enum Outcome {
    Passed(Duration),
    Failed(Duration, String),
    Skipped(&'static str),
    NotRun,
}

/// An ordered list of steps for one task (`test`, `ci`, `nostd`).
pub struct Runner<'a> {
    task: &'static str,
    steps: Vec<Step<'a>>,
}

impl<'a> Runner<'a> {
    /// An empty list for the task `task` (used in headers and the summary).
    pub fn new(task: &'static str) -> Runner<'a> {
        Runner {
            task,
            steps: Vec::new(),
        }
    }

    /// Adds a step: `name` is short (`clippy`), `what` says what it runs.
    pub fn step(
        &mut self,
        name: &'static str,
        what: String,
        skip: Skip,
        action: impl FnOnce() -> Result<(), String> + 'a,
    ) {
        self.steps.push(Step {
            name,
            what,
            skip,
            action: Box::new(action),
        });
    }

    /// Runs the steps in order until one fails, then prints the summary. `Err` means a step
    /// failed (already reported).
    pub fn run(self) -> Result<(), ()> {
        let start = Instant::now();
        let to_run = self
            .steps
            .iter()
            .filter(|s| matches!(s.skip, Skip::No))
            .count();
        let mut results = Vec::with_capacity(self.steps.len());
        let mut failed: Option<(&'static str, String, String)> = None;
        let mut index = 0;
        for step in self.steps {
            if let Skip::Because(why) = step.skip {
                results.push((step.name, Outcome::Skipped(why)));
                continue;
            }
            if failed.is_some() {
                results.push((step.name, Outcome::NotRun));
                continue;
            }
            index += 1;
            println!();
            println!("==> [{index}/{to_run}] {}: {}", step.name, step.what);
            flush();
            let t = Instant::now();
            let result = (step.action)();
            let took = t.elapsed();
            match result {
                Ok(()) => {
                    println!("<== {} ok in {}", step.name, human(took));
                    results.push((step.name, Outcome::Passed(took)));
                }
                Err(e) => {
                    println!("<== {} FAILED in {}: {e}", step.name, human(took));
                    failed = Some((step.name, step.what.clone(), e.clone()));
                    results.push((step.name, Outcome::Failed(took, e)));
                }
            }
            flush();
        }

        let total = human(start.elapsed());
        println!();
        println!("==> xtask {} summary", self.task);
        for (name, outcome) in &results {
            match outcome {
                Outcome::Passed(d) => println!("  ok       {name:<10} {:>8}", human(*d)),
                Outcome::Failed(d, e) => println!("  FAILED   {name:<10} {:>8}  {e}", human(*d)),
                Outcome::Skipped(why) => println!("  skipped  {name:<10} {:>8}  ({why})", ""),
                Outcome::NotRun => println!("  not run  {name}"),
            }
        }
        let result = match failed {
            None => {
                let plural = if to_run == 1 { "" } else { "s" };
                println!(
                    "xtask {}: all {to_run} step{plural} passed in {total}",
                    self.task
                );
                Ok(())
            }
            Some((name, what, _)) => {
                println!(
                    "xtask {}: FAILED at step `{name}` ({what}) after {total}",
                    self.task
                );
                Err(())
            }
        };
        flush();
        result
    }
}

fn flush() {
    let _ = std::io::stdout().flush();
}

/// `12.3s` or `4m 05s`.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let s = d.as_secs();
        format!("{}m {:02}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn durations() {
        assert_eq!(human(Duration::from_millis(1234)), "1.2s");
        assert_eq!(human(Duration::from_secs(245)), "4m 05s");
    }

    #[test]
    fn stops_at_first_failure_and_skips() {
        let ran = Cell::new(0);
        let mut r = Runner::new("unit");
        r.step("a", "first".into(), Skip::No, || {
            ran.set(ran.get() + 1);
            Ok(())
        });
        r.step("b", "skipped".into(), Skip::Because("test"), || {
            panic!("skipped step ran")
        });
        r.step("c", "fails".into(), Skip::No, || Err("boom".into()));
        r.step("d", "after failure".into(), Skip::No, || {
            panic!("step after a failure ran")
        });
        assert!(r.run().is_err());
        assert_eq!(ran.get(), 1);

        let mut r = Runner::new("unit");
        r.step("a", "passes".into(), Skip::No, || Ok(()));
        assert!(r.run().is_ok());
    }
}
