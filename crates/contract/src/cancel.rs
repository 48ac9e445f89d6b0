//! Cancellation: one [`CancellationToken`] (tokio-util's) that the CLI cancels
//! on Ctrl-C. Async stages `select!` on `token.cancelled()`, loops check
//! `is_cancelled()` at their safe points (between git packets, stream items),
//! and blocking work that cannot check (a running `make`) registers a callback
//! with [`on_cancel`].

use std::time::Duration;

pub use tokio_util::sync::CancellationToken;

/// Runs a callback when the token is cancelled, until dropped.
#[derive(Debug)]
pub struct OnCancel {
    stop: CancellationToken,
}

impl Drop for OnCancel {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Run `f` once, as soon as `token` is cancelled (at once if it already is),
/// unless the returned guard is dropped first. Uses the current tokio runtime
/// when there is one (blocking work runs on its blocking threads), else a
/// thread of its own.
pub fn on_cancel(token: &CancellationToken, f: impl FnOnce() + Send + 'static) -> OnCancel {
    let stop = CancellationToken::new();
    let (token, until) = (token.clone(), stop.clone());
    let wait = async move {
        tokio::select! {
            biased;
            () = token.cancelled() => f(),
            () = until.cancelled() => {}
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(wait);
        }
        Err(_) => {
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(wait),
                    // No runtime can be built: poll (a tenth of a second is
                    // within what a person waits after Ctrl-C).
                    Err(_) => poll(wait),
                }
            });
        }
    }
    OnCancel { stop }
}

fn poll(wait: impl std::future::Future<Output = ()>) {
    let mut wait = std::pin::pin!(wait);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    while wait.as_mut().poll(&mut cx).is_pending() {
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn runs_on_cancel_without_a_runtime_and_not_after_the_guard_drops() {
        let token = CancellationToken::new();
        let (tx, rx) = mpsc::channel();
        let dropped = on_cancel(&token, {
            let tx = tx.clone();
            move || tx.send("dropped").unwrap_or(())
        });
        drop(dropped);
        let _kept = on_cancel(&token, move || tx.send("kept").unwrap_or(()));
        std::thread::sleep(Duration::from_millis(50));
        token.cancel();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok("kept"));
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    }

    #[tokio::test]
    async fn runs_at_once_when_already_cancelled_inside_a_runtime() {
        let token = CancellationToken::new();
        token.cancel();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _guard = on_cancel(&token, move || tx.send(()).unwrap_or(()));
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("the callback ran")
            .expect("sent");
    }
}
