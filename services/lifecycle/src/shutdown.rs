//! The signal that starts a graceful stop.

/// Resolves when SIGTERM or SIGINT arrives, and logs which.
///
/// Both mean "stop taking work, finish or hand back what is running, then exit"; what
/// that takes is the caller's business. SIGTERM is what orchestrators send (ECS,
/// Kubernetes, `docker stop`, systemd), SIGINT is Ctrl-C in a terminal. Keep the future
/// (pinned) for the whole run: the handlers are installed when it is first polled, and a
/// signal that arrives before then gets the default action (the process dies).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on Unix");
        let mut interrupt = signal(SignalKind::interrupt())
            .expect("installing a SIGINT handler cannot fail on Unix");
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = interrupt.recv() => tracing::info!("SIGINT received; shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C received; shutting down");
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::Poll;

    /// Sends `signal` to this test process once `shutdown_signal` has installed its
    /// handlers, and waits for it to resolve.
    async fn raise_while_waiting(signal: libc::c_int) {
        let mut waiting = std::pin::pin!(shutdown_signal());
        // The first poll installs the handlers; nothing has arrived yet.
        let first = std::future::poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "resolved before any signal");
        // SAFETY: raise(3) on this process; the handler installed above catches it, so the
        // default action (terminating the test binary) does not apply.
        assert_eq!(unsafe { libc::raise(signal) }, 0);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("the signal is seen");
    }

    // One test for both signals: the handlers are process-wide, and two tests raising
    // signals in parallel threads of one test binary would see each other's.
    #[tokio::test]
    async fn sigterm_and_sigint_both_resolve_it() {
        raise_while_waiting(libc::SIGTERM).await;
        raise_while_waiting(libc::SIGINT).await;
    }
}
