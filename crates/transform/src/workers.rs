//! The transform's worker threads: items (parts, files) handed out one at a time to a thread per
//! core, each thread keeping its own state (writers, counts).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::error::TransformError;

/// Runs `work(state, item)` for items `0..n` on `workers` threads, each item once, each thread
/// with its own state from `init`; returns the states, or the first error.
pub(crate) fn on_workers<S: Send>(
    workers: usize,
    n: usize,
    init: impl Fn(usize) -> S + Sync,
    work: impl Fn(&mut S, usize) -> Result<(), TransformError> + Sync,
) -> Result<Vec<S>, TransformError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers.clamp(1, n.max(1)))
            .map(|w| {
                let (next, failed, init, work) = (&next, &failed, &init, &work);
                s.spawn(move || {
                    let mut state = init(w);
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        if let Err(e) = work(&mut state, i) {
                            failed.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                    Ok(state)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|payload| {
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".into());
                    Err(TransformError::Panicked { message })
                })
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_panic_is_an_internal_error_with_its_message() {
        let r = on_workers(
            2,
            4,
            |_| (),
            |_, i| {
                if i == 2 {
                    panic!("item {i} broke");
                }
                Ok(())
            },
        );
        match r {
            Err(TransformError::Panicked { message }) => assert_eq!(message, "item 2 broke"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
