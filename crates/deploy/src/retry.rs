//! API calls retried on what a busy or briefly unavailable API server answers
//! (429, 500, 502, 503, 504, a dropped connection), with back-off, as client-go
//! does for idempotent requests. Everything deploy sends is idempotent: reads,
//! server-side apply, deletes, access reviews.

use std::future::Future;
use std::time::Duration;

const ATTEMPTS: u32 = 8;

pub(crate) fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Run `call` until it succeeds, fails for good, or has been tried 8 times.
pub(crate) async fn call<T, F, Fut>(mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if transient(&e) && attempt < ATTEMPTS => {
                let throttled = matches!(&e, kube::Error::Api(s) if s.code == 429);
                tracing::debug!("retrying after a transient error: {e}");
                tokio::time::sleep(if throttled {
                    delay.max(Duration::from_secs(1))
                } else {
                    delay
                })
                .await;
                delay = (delay * 2).min(Duration::from_secs(3));
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("x", "y")
                .with_code(code)
                .boxed(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_and_others_are_not() {
        let mut n = 0;
        let r: Result<u32, _> = call(|| {
            n += 1;
            let result = if n < 3 { Err(status(503)) } else { Ok(n) };
            async move { result }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
        let mut m = 0;
        let r: Result<u32, _> = call(|| {
            m += 1;
            async { Err(status(404)) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(m, 1);
    }
}
