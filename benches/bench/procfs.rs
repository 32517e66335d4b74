//! What /proc says: a process's resident memory, CPU time and listening port, and the time
//! each CPU spent busy.

use std::{collections::HashSet, io, process::Command, sync::LazyLock, time::Duration};

/// Resident memory (`VmRSS` in `/proc/<pid>/status`) in bytes.
pub fn rss(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/<pid>/status"))
}

/// CPU time a process used, in user space and in the kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    pub fn total(self) -> Duration {
        self.user + self.system
    }

    /// The time used since `earlier`.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// CPU time used so far by every thread of `pid` (`utime` and `stime` in `/proc/<pid>/stat`).
pub fn cpu_time(pid: u32) -> io::Result<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces: state is
    // field 3, utime 14 and stime 15.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |field: usize| fields.get(field - 3).and_then(|v| v.parse::<u64>().ok());
    match (ticks(14), ticks(15)) {
        (Some(user), Some(system)) => Ok(CpuTime {
            user: from_ticks(user),
            system: from_ticks(system),
        }),
        _ => Err(io::Error::other("unreadable /proc/<pid>/stat")),
    }
}

/// Time every thread of `pid` spent on a CPU, to the nanosecond (the first field of each
/// `/proc/<pid>/task/<tid>/schedstat`): finer than [`cpu_time`]'s clock ticks, for short runs.
pub fn run_time(pid: u32) -> io::Result<Duration> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let schedstat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        let on_cpu = schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok());
        total += on_cpu.ok_or_else(|| io::Error::other("unreadable schedstat"))?;
    }
    Ok(Duration::from_nanos(total))
}

/// Time one CPU spent running anything, and time the hypervisor kept it from running.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBusy {
    pub busy: Duration,
    pub steal: Duration,
}

/// Every CPU's [`CpuBusy`] so far, indexed by CPU number (`/proc/stat`).
pub fn cpu_busy() -> Vec<CpuBusy> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut cpus = Vec::new();
    for line in stat.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let Some(Ok(cpu)) = fields.next().map(str::parse::<usize>) else {
            continue; // the "cpu" line sums all CPUs
        };
        // user nice system idle iowait irq softirq steal
        let ticks: Vec<u64> = fields.take(8).filter_map(|v| v.parse().ok()).collect();
        let [user, nice, system, _idle, _iowait, irq, softirq, steal] = ticks[..] else {
            continue;
        };
        if cpus.len() <= cpu {
            cpus.resize(cpu + 1, CpuBusy::default());
        }
        cpus[cpu] = CpuBusy {
            busy: from_ticks(user + nice + system + irq + softirq),
            steal: from_ticks(steal),
        };
    }
    cpus
}

/// The port of a TCP socket in state LISTEN that process `pid` holds: the inodes of its
/// sockets (`/proc/<pid>/fd`), matched against the kernel's table (`/proc/<pid>/net/tcp`).
pub fn listening_port(pid: u32) -> Option<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|entry| {
            let target = std::fs::read_link(entry.ok()?.path()).ok()?;
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
        const LISTEN: &str = "0A";
        if *state != LISTEN || !inodes.contains(*inode) {
            return None;
        }
        u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
    })
}

/// The processes whose parent is `pid` (field 4 of each `/proc/<n>/stat`).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let child: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            let after_name = stat.rsplit_once(')')?.1;
            let parent: u32 = after_name.split_whitespace().nth(1)?.parse().ok()?;
            (parent == pid).then_some(child)
        })
        .collect()
}

/// How many descriptors `pid` holds open (entries of `/proc/<pid>/fd`).
pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| entries.count())
}

/// `pid`'s soft limit on open files (`Max open files` in `/proc/<pid>/limits`).
pub fn open_file_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn from_ticks(ticks: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / *CLOCK_TICKS as f64)
}

/// Clock ticks per second, the unit of the CPU times in /proc (almost always 100).
static CLOCK_TICKS: LazyLock<u64> = LazyLock::new(|| {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
});
