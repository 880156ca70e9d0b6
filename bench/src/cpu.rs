//! CPU accounting of a phase from `/proc`: Nexus (this process apart from the load generator's
//! threads), the load generator, and a Cassandra node on the same machine.
//!
//! The HTTP load generators of the accept phases run on their own runtime
//! ([`load_runtime`], threads named `bench-load`), so this process's CPU time minus those
//! threads' is what the in-process Nexus (and its store driver) spent. Per-thread times come
//! from `/proc/self/task/<tid>/stat`; the process total from `/proc/self/stat`, which keeps the
//! time of threads that already exited (tokio's blocking pool lets idle threads go).

use std::sync::OnceLock;

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux architecture Nexus builds for.
const CLOCK_TICKS: f64 = 100.0;
/// Name of the load generator's threads.
const LOAD_THREAD: &str = "bench-load";

/// The runtime HTTP load generators run on (2 worker threads named `bench-load`).
pub fn load_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(LOAD_THREAD)
            .enable_all()
            .build()
            .expect("cannot build the load generator's runtime")
    })
}

/// User + system seconds in a `/proc/.../stat` file's text.
fn stat_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / CLOCK_TICKS)
}

/// CPU seconds (user + system) of `pid`, or None when it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU seconds of this process's threads named [`LOAD_THREAD`].
fn load_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter(|s| {
            s.find('(')
                .is_some_and(|i| s[i + 1..].starts_with(LOAD_THREAD))
        })
        .filter_map(|s| stat_seconds(&s))
        .sum()
}

/// The pid of a Cassandra node on this machine (`CassandraDaemon` in its command line).
#[must_use]
pub fn cassandra_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(15).any(|w| w == b"CassandraDaemon"))
        })
}

#[derive(Debug, Clone, Copy)]
struct Snapshot {
    process: f64,
    load: f64,
    cassandra: Option<f64>,
}

impl Snapshot {
    fn take(cassandra: Option<u32>) -> Self {
        Self {
            process: cpu_seconds(std::process::id()).unwrap_or(0.0),
            load: load_seconds(),
            cassandra: cassandra.and_then(cpu_seconds),
        }
    }
}

/// Measures the CPU a phase uses, from [`Meter::start`] to [`Meter::stop`].
#[derive(Debug)]
pub struct Meter {
    cassandra: Option<u32>,
    start: Snapshot,
}

/// CPU seconds a phase used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Used {
    /// This process apart from the load generator: Nexus in-process (and store drivers).
    pub nexus: f64,
    /// The load generator's threads.
    pub load: f64,
    /// The Cassandra node, when one runs here.
    pub cassandra: Option<f64>,
}

impl Meter {
    /// Starts measuring (finding a local Cassandra node when `cassandra`).
    #[must_use]
    pub fn start(cassandra: bool) -> Self {
        let cassandra = if cassandra { cassandra_pid() } else { None };
        Self {
            cassandra,
            start: Snapshot::take(cassandra),
        }
    }

    /// What was used since [`Meter::start`].
    #[must_use]
    pub fn stop(&self) -> Used {
        let end = Snapshot::take(self.cassandra);
        let load = end.load - self.start.load;
        Used {
            nexus: (end.process - self.start.process - load).max(0.0),
            load,
            cassandra: end.cassandra.zip(self.start.cassandra).map(|(e, s)| e - s),
        }
    }
}

impl Used {
    /// Microseconds per operation of each part, for `ops` operations.
    #[must_use]
    pub fn per_op_us(&self, ops: usize) -> (f64, f64, Option<f64>) {
        let n = ops.max(1) as f64;
        (
            self.nexus * 1e6 / n,
            self.load * 1e6 / n,
            self.cassandra.map(|c| c * 1e6 / n),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces() {
        let stat = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0";
        assert_eq!(stat_seconds(stat), Some(4.0));
    }

    #[test]
    fn this_process_uses_cpu() {
        let m = Meter::start(false);
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let u = m.stop();
        assert!(u.nexus > 0.0, "{u:?}");
        assert_eq!(u.cassandra, None);
    }
}
