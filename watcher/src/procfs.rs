//! `/proc/PID/stat`, read in one place. The command name (field 2) is the process's own choice
//! and may hold spaces and parentheses, so the fields are taken after its last `)`.

/// The fields of `/proc/PID/stat` that watcher uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `D`, `T` (stopped), `t`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Field 4.
    pub ppid: u32,
    /// Field 20.
    pub threads: u64,
    /// Field 22: clock ticks since boot ([`clock_ticks`] a second). With the pid, it names one
    /// process even when pids are reused.
    pub start_ticks: u64,
}

impl Stat {
    /// Process `pid`'s stat; None when it is gone (or the file is not what the kernel writes).
    pub fn of(pid: u32) -> Option<Stat> {
        parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Stopped by a signal (SIGSTOP, or the kernel's hold of a program at exec).
    pub fn stopped(&self) -> bool {
        self.state == 'T'
    }

    /// Exited: a zombie not reaped yet, or dead.
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// One `/proc/PID/stat` line.
pub fn parse(stat: &str) -> Option<Stat> {
    let (_, rest) = stat.rsplit_once(')')?;
    // Field 3 on.
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let threads = f.nth(15)?.parse().ok()?;
    let start_ticks = f.nth(1)?.parse().ok()?;
    Some(Stat { state, ppid, threads, start_ticks })
}

/// Clock ticks a second (`sysconf(_SC_CLK_TCK)`, 100 where it cannot be read).
pub fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|&h| h > 0).unwrap_or(100) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fields_are_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4711 (a) b (c)) T 4700 4711 4700 0 -1 4194560 90 0 0 0 0 0 0 0 20 0 1 0 123456 2416640 180 18446744073709551615";
        let s = parse(stat).unwrap();
        assert_eq!(s, Stat { state: 'T', ppid: 4700, threads: 1, start_ticks: 123456 });
        assert!(s.stopped() && !s.exited());
        for short in ["1 (x) S", "1 (x) S 0", "1 (x)", "1 (x", ")", ""] {
            assert_eq!(parse(short), None, "{short:?}");
        }
    }

    #[test]
    fn this_process_reads_as_running_with_its_parent() {
        let s = Stat::of(std::process::id()).unwrap();
        assert!(s.state == 'R' || s.state == 'S', "{s:?}");
        assert!(!s.exited() && !s.stopped());
        assert_eq!(s.ppid, nix::unistd::getppid().as_raw() as u32);
        assert!(s.threads >= 1 && s.start_ticks > 0);
        assert_eq!(Stat::of(std::process::id()).unwrap().start_ticks, s.start_ticks, "the start time is stable");
        assert!(clock_ticks() > 0);
    }
}
