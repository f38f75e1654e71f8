//! Inference at a lower CPU priority than the API. In the embedded deployment the API
//! and the worker share the machine's cores; a denoising loop that keeps every core busy
//! would otherwise make each request wait for the scheduler to take a core away from it.
//! The threads that compute (the one a job runs on and the rayon pool candle and our
//! kernels share) get a higher nice value, so a request that wakes up runs at once and
//! inference keeps every cycle the API does not use.
//!
//! Linux keeps a nice value per thread, and an unprivileged thread cannot lower its
//! value again, so each job runs on a thread of its own instead of tokio's blocking
//! pool (whose threads later serve the API).

use std::sync::Once;

use tokio::sync::oneshot;

/// Raises the calling thread's nice value to `nice` (0 leaves it). Best effort: where
/// it fails, inference only runs at the API's priority.
fn lower_this_thread(nice: i32) {
    if nice <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0 {
            tracing::debug!(nice, "could not lower the inference thread's priority");
        }
    }
}

/// Builds rayon's global pool with threads at `nice`. Only the first call in a process
/// counts, and only before anything used the pool; later calls change nothing.
pub(super) fn lower_compute_pool(nice: i32) {
    static ONCE: Once = Once::new();
    if nice <= 0 {
        return;
    }
    ONCE.call_once(|| {
        let built = rayon::ThreadPoolBuilder::new()
            .num_threads(candle_core::utils::get_num_threads().max(1))
            .start_handler(move |_| lower_this_thread(nice))
            .build_global();
        if let Err(e) = built {
            tracing::debug!(error = %e, "rayon's pool was already built; inference keeps its priority");
        }
    });
}

/// Starts `work` on a new thread at `nice` now, and returns its result to await: `Err`
/// with the panic's message if it panicked.
pub(super) fn spawn_inference<T: Send + 'static>(
    nice: i32,
    work: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = Result<T, String>> {
    let (done, result) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("sdq-inference".into())
        .spawn(move || {
            lower_this_thread(nice);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let _ = done.send(outcome.map_err(|panic| {
                panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into())
            }));
        });
    async move {
        spawned.map_err(|e| format!("no inference thread: {e}"))?;
        result
            .await
            .unwrap_or_else(|_| Err("the inference thread stopped".into()))
    }
}
