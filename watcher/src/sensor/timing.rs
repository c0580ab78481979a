//! Where the start and stop of the sensors go: object load (ELF, BTF, maps), verification
//! (the kernel's BPF_PROG_LOAD of every program), attachment (attach and pin) and detachment.
//! Reported as one `tracing` line with target `watcher::timing` (`WATCHER_LOG=watcher::timing=info`),
//! which `watcher-bench` reads; nothing else depends on it.
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

#[derive(Clone, Copy)]
pub enum Phase {
    Object,
    Verify,
    Attach,
    Detach,
}

static NS: [AtomicU64; 4] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Run `f`, adding its wall-clock time to `phase`.
pub fn time<T>(phase: Phase, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    NS[phase as usize].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    r
}

/// Add `d` to `phase`.
pub fn add(phase: Phase, d: std::time::Duration) {
    NS[phase as usize].fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
}

fn ms(p: Phase) -> f64 {
    NS[p as usize].load(Ordering::Relaxed) as f64 / 1e6
}

/// After the start: the load, verify and attach times so far.
pub fn report_start() {
    tracing::info!(
        target: "watcher::timing",
        "start: object {:.1} ms, verify {:.1} ms, attach {:.1} ms",
        ms(Phase::Object),
        ms(Phase::Verify),
        ms(Phase::Attach)
    );
}

/// After the detachment.
pub fn report_stop() {
    tracing::info!(target: "watcher::timing", "stop: detach {:.1} ms", ms(Phase::Detach));
}

/// One program's verification, at debug level: its load's wall time, the instructions the
/// verifier processed (`verified_insns` of bpf_prog_info, kernel >= 5.16; the cost that does
/// not depend on the machine's load) and the program's size after verification.
pub fn verified(name: &str, wall: std::time::Duration, info: Option<&aya::programs::ProgramInfo>) {
    let insns = info.and_then(|i| i.verified_instruction_count());
    let size = info.and_then(|i| i.size_translated()).map(|b| b / 8);
    tracing::debug!(
        target: "watcher::timing",
        "verify {name}: {:.1} ms, {} instructions processed, {} instructions",
        wall.as_secs_f64() * 1e3,
        insns.map_or("?".to_string(), |n| n.to_string()),
        size.map_or("?".to_string(), |n| n.to_string()),
    );
}
