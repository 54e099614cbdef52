//! Thread priority: control threads give way to the relay's workers.

/// Lowers the calling thread's priority by `nice` (on Linux the nice value belongs to a
/// thread, and threads inherit it from their creator). Called at the start of every control
/// thread (the gRPC and metrics runtime, SIP in signaling) so that a relay worker sharing a
/// core with them wins it when packets arrive: a call set up on the control path must not
/// delay the media of live calls. Relay workers must therefore be spawned from a thread that
/// was not lowered (the main thread). Raising a nice value needs no privilege. A thread
/// started by a control thread (tokio's blocking pool) inherits the lowered value and is not
/// lowered again: the target is the process's own nice value plus `nice`, whatever the
/// thread was handed.
pub fn lower_control_thread(nice: u8) {
    static BASELINE: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    if nice == 0 {
        return;
    }
    let current = rustix::process::getpriority_process(None).unwrap_or(0);
    // The first control thread runs at the process's own value (it was started from a
    // thread nobody lowered).
    let target = (*BASELINE.get_or_init(|| current) + i32::from(nice)).min(19);
    if current < target
        && let Err(error) = rustix::process::nice(target - current)
    {
        tracing::warn!(%error, nice, "cannot lower the priority of a control thread");
    }
}
