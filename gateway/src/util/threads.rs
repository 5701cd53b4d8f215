//! Threads and processes as Linux's `/proc` shows them: the calling
//! thread's id and a thread's or a process's CPU time, so a stage's
//! watchdog can tell a worker computing a long frame (its CPU time grows)
//! from one blocked for good (it does not), and `bench all` can measure
//! an idle service's CPU. Nothing here fails: what cannot be read is `None`.

/// The calling thread's id, as `/proc/thread-self` names it.
pub fn current_tid() -> Option<u32> {
    std::fs::read_link("/proc/thread-self").ok()?.file_name()?.to_str()?.parse().ok()
}

/// utime + stime of one of this process's threads, in clock ticks (`None`
/// once it has ended or if `/proc` cannot be read).
pub fn thread_cpu_ticks(tid: u32) -> Option<u64> {
    stat_cpu_ticks(&format!("/proc/self/task/{tid}/stat"))
}

/// utime + stime of process `pid` (all its threads), in clock ticks.
pub fn process_cpu_ticks(pid: u32) -> Option<u64> {
    stat_cpu_ticks(&format!("/proc/{pid}/stat"))
}

/// utime + stime from a `stat` file of `/proc`.
fn stat_cpu_ticks(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // fields count from the last ')'. utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calling_thread_is_found_and_its_cpu_time_read() {
        let tid = current_tid().expect("/proc/thread-self names the thread");
        assert!(thread_cpu_ticks(tid).is_some(), "its stat file parses");
        assert_eq!(thread_cpu_ticks(u32::MAX), None, "no such thread: None, not an error");
        // Read the thread first: the process's time, read after it, holds it.
        let thread = thread_cpu_ticks(tid).unwrap_or(0);
        let process = process_cpu_ticks(std::process::id()).expect("this process's stat file parses");
        assert!(process >= thread, "a process's time holds its threads': {process} < {thread}");
    }
}
