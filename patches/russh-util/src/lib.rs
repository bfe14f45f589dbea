//! The runtime helpers russh uses (see README.md for why this stands in for upstream's).

pub mod runtime {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_util::FutureExt;

    /// The spawned task ended without a result (it panicked or was aborted).
    #[derive(Debug)]
    pub struct JoinError;

    impl std::fmt::Display for JoinError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JoinError")
        }
    }

    impl std::error::Error for JoinError {}

    /// The result of a task started with [`spawn`].
    pub struct JoinHandle<T: Send> {
        result: tokio::sync::oneshot::Receiver<T>,
    }

    /// Runs `future` on the tokio runtime. The task holds `future` once: `map` moves it
    /// into its own state, where an `async` block that awaits a captured future keeps it
    /// twice.
    pub fn spawn<F, T>(future: F) -> JoinHandle<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (sender, result) = tokio::sync::oneshot::channel();
        tokio::spawn(future.map(move |value| {
            // Nobody waiting for the result is fine: the task's work is done.
            let _ = sender.send(value);
        }));
        JoinHandle { result }
    }

    impl<T: Send> Future for JoinHandle<T> {
        type Output = Result<T, JoinError>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            Pin::new(&mut self.result)
                .poll(cx)
                .map(|r| r.map_err(|_| JoinError))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[tokio::test]
        async fn the_result_comes_back_and_a_panic_is_a_join_error() {
            assert_eq!(spawn(async { 7 }).await.ok(), Some(7));
            let panicked: JoinHandle<()> = spawn(async { panic!("in the task") });
            assert!(panicked.await.is_err());
        }

        #[test]
        fn the_task_holds_the_future_once() {
            let big = async {
                let buffer = [0u8; 4096];
                tokio::task::yield_now().await;
                buffer.len()
            };
            let size = std::mem::size_of_val(&big);
            let (sender, _) = tokio::sync::oneshot::channel::<usize>();
            let mapped = big.map(move |n| {
                let _ = sender.send(n);
            });
            assert!(std::mem::size_of_val(&mapped) < size + 64);
        }
    }
}

pub mod time {
    pub use std::time::Instant;
}
