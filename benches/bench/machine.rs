//! The machine: which CPU the proxy gets and which the load gets (pinned with `taskset`), how
//! much of them other processes took meanwhile, and what the machine is, for the report.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::procfs::{self, CpuBusy};

/// Who runs where.
#[derive(Clone, Debug, Serialize)]
pub struct Pinning {
    /// The CPU the proxy has to itself, when pinned.
    pub proxy_cpu: Option<usize>,
    /// The CPU the mock and the load generator share (this process).
    pub load_cpu: Option<usize>,
    /// One line for the report.
    pub note: String,
}

/// Pins this process to the second CPU it may use and keeps the first for the proxy. Call
/// it before any thread starts: threads inherit the mask of the thread that creates them.
/// Without `taskset` or a second CPU nothing is pinned, and the note says so.
pub fn pin() -> Pinning {
    let unpinned = |why: &str| Pinning {
        proxy_cpu: None,
        load_cpu: None,
        note: format!("NOT pinned ({why}): proxy, mock and load share the CPUs"),
    };
    let cpus = allowed_cpus();
    let [proxy, load, ..] = cpus[..] else {
        return unpinned("fewer than 2 CPUs available");
    };
    let pinned = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &load.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status();
    match pinned {
        Ok(status) if status.success() => Pinning {
            proxy_cpu: Some(proxy),
            load_cpu: Some(load),
            note: format!(
                "proxy alone on CPU {proxy}; mock and load generator on CPU {load} (taskset)"
            ),
        },
        Ok(_) => unpinned("taskset failed"),
        Err(_) => unpinned("taskset not found; install util-linux"),
    }
}

/// The CPUs this process may run on (`Cpus_allowed_list`, such as `0-1` or `0,2-3`).
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(list) = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
    else {
        return Vec::new();
    };
    list.trim()
        .split(',')
        .flat_map(|range| {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            match (first.parse::<usize>(), last.parse::<usize>()) {
                (Ok(first), Ok(last)) => first..last + 1,
                _ => 0..0,
            }
        })
        .collect()
}

/// What the numbers were measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub rustc: String,
}

pub fn describe() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown", |(_, model)| model.trim())
        .to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(
        |_| "unknown".to_owned(),
        |release| release.trim().to_owned(),
    );
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |version| version.trim().to_owned());
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        kernel,
        rustc,
    }
}

/// CPU time at one moment: per CPU, and of the proxies (all share one CPU) and of this
/// process.
pub struct CpuUse {
    at: Instant,
    cpus: Vec<CpuBusy>,
    proxy: Duration,
    bench: Duration,
}

impl CpuUse {
    pub fn read(proxy_pids: &[u32]) -> CpuUse {
        let own = |pid| procfs::cpu_time(pid).unwrap_or_default().total();
        CpuUse {
            at: Instant::now(),
            cpus: procfs::cpu_busy(),
            proxy: proxy_pids.iter().map(|&pid| own(pid)).sum(),
            bench: own(std::process::id()),
        }
    }
}

/// How much of each CPU something other than the proxy and the benchmark used during a
/// scenario (a shared machine disturbs the figures), and how much the hypervisor stole.
/// Unpinned, both shares are of all CPUs together.
#[derive(Clone, Debug, Serialize)]
pub struct Interference {
    pub scenario: String,
    pub others_on_proxy_cpu_pct: f64,
    pub others_on_load_cpu_pct: f64,
    pub steal_pct: f64,
}

impl Interference {
    pub fn between(scenario: String, before: &CpuUse, after: &CpuUse, pinning: &Pinning) -> Self {
        let wall = (after.at - before.at).as_secs_f64().max(1e-9);
        let used = |cpus: &[usize], field: fn(&CpuBusy) -> Duration| -> f64 {
            cpus.iter()
                .map(|&cpu| {
                    let at = |u: &CpuUse| u.cpus.get(cpu).map_or(Duration::ZERO, field);
                    at(after).saturating_sub(at(before)).as_secs_f64()
                })
                .sum()
        };
        let own = |f: fn(&CpuUse) -> Duration| f(after).saturating_sub(f(before)).as_secs_f64();
        let share = |seconds: f64, cpus: usize| (seconds / (wall * cpus as f64) * 100.0).max(0.0);
        let all: Vec<usize> = (0..after.cpus.len()).collect();
        let steal = share(used(&all, |c| c.steal), all.len());
        match (pinning.proxy_cpu, pinning.load_cpu) {
            (Some(proxy), Some(load)) => Interference {
                scenario,
                others_on_proxy_cpu_pct: share(used(&[proxy], |c| c.busy) - own(|u| u.proxy), 1),
                others_on_load_cpu_pct: share(used(&[load], |c| c.busy) - own(|u| u.bench), 1),
                steal_pct: steal,
            },
            _ => {
                let others = used(&all, |c| c.busy) - own(|u| u.proxy) - own(|u| u.bench);
                let others = share(others, all.len());
                Interference {
                    scenario,
                    others_on_proxy_cpu_pct: others,
                    others_on_load_cpu_pct: others,
                    steal_pct: steal,
                }
            }
        }
    }
}
