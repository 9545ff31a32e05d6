//! What a connection handler gets from the worker it runs on: the worker's context (config
//! snapshot, upstream pools, drain signal), the `LocalSet` executor, and the cached `Date`.
//! A leaf apart from `worker.rs` (the threads and accept loops), so the HTTP and TCP handlers
//! the accept loop calls do not depend on the module that calls them.

use std::cell::RefCell;
use std::future::Future;
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use tokio::sync::watch;

use crate::snapshot::SharedSnapshot;
use crate::upstream::conn_pool::ConnPools;

/// hyper executor that spawns on the worker's `LocalSet`, so per-request futures need not be
/// `Send` and per-worker state can be `Rc`/`RefCell` instead of locks.
#[derive(Clone, Copy, Debug)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// What one worker owns.
pub struct WorkerCtx {
    /// Worker index (0-based).
    pub index: usize,
    /// The shared config snapshot.
    pub snapshot: SharedSnapshot,
    /// This worker's upstream pools.
    pub pools: ConnPools,
    /// Becomes `true` when the server drains.
    pub drain: watch::Receiver<bool>,
}

thread_local! {
    // Per thread (each worker is one), so formatting the date costs one string per second
    // per worker and no lock.
    static DATE: RefCell<(u64, HeaderValue)> = const { RefCell::new((0, HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))) };
}

/// The current time as an HTTP date, cached per second per worker.
pub fn http_date() -> HeaderValue {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != now {
            let s = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(now));
            if let Ok(v) = HeaderValue::from_str(&s) {
                *d = (now, v);
            }
        }
        d.1.clone()
    })
}
