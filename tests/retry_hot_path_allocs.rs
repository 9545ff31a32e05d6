//! The per-request retry and timeout decisions of a route without a retry policy allocate
//! nothing (the router's no-retry path must stay as cheap as before retries existed): counted
//! with a global allocator of this test binary alone.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use pinion::http::router::retry_state::RetryState;
use pinion::http::router::route_decision::{expected_timeout_ms, final_timeouts};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn no_policy_decisions_do_not_allocate() {
    let mut headers = HeaderMap::new();
    for (k, v) in [("host", "example.com"), ("user-agent", "curl/8"), ("accept", "*/*"), ("x-request-id", "abc")] {
        headers.insert(k, HeaderValue::from_static(v));
    }
    // Warm up anything lazily initialised.
    let _ = final_timeouts(Some(Duration::from_secs(15)), None, &mut headers, false);
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        let t = final_timeouts(Some(Duration::from_secs(15)), None, &mut headers, false);
        assert_eq!(expected_timeout_ms(&t, Duration::ZERO), Some(15_000));
        let state = RetryState::<rand::rngs::ThreadRng>::create(
            None,
            &mut headers,
            |_, _| unreachable!("no retriable_request_headers"),
            || unreachable!("no state, no backoff"),
            || unreachable!("no state, no random source"),
        );
        assert!(state.is_none());
    }
    assert_eq!(ALLOCS.load(Ordering::Relaxed) - before, 0, "the no-policy path allocated");
    assert_eq!(headers.len(), 4);
}
