//! A shutdown request, observed between messages.

use std::future::Future;
use tokio::sync::watch;

/// A shutdown request (SIGTERM, Ctrl-C, a test), observed between messages.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A shutdown handle and the sender that triggers it.
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when shutdown is requested. The future owns its receiver,
    /// so it borrows nothing (and stays `Send` whatever holds it).
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            // An error means the sender is gone: nobody can ask any more, so
            // never resolve.
            if rx.wait_for(|stop| *stop).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
