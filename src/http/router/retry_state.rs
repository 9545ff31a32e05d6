//! Retry state (Envoy's `RetryStateImpl`, `retry_state_impl.cc`): after each failed or
//! retriable attempt, the router asks whether to try again.
//!
//! Today no route can carry a retry policy (translation refuses `retry_policy` until the
//! resilience work lands), so a request's state is [`RetryState::none`] and every attempt is
//! final; the router already loops over attempts through this type, so policies, budgets
//! and backoff slot in here without reshaping the router.

use super::upstream_request::AttemptFailure;

/// What the router should do after an attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Answer the client with this attempt's outcome.
    NoRetry,
}

/// A request's retry state.
#[derive(Debug, Default)]
pub struct RetryState {
    attempts: u32,
}

impl RetryState {
    /// No retry policy: the first attempt is final.
    pub fn none() -> Self {
        RetryState { attempts: 0 }
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Called after an attempt that produced no response.
    pub fn on_failure(&mut self, _failure: &AttemptFailure) -> RetryDecision {
        self.attempts += 1;
        RetryDecision::NoRetry
    }

    /// Called after an attempt that produced response headers with `status`.
    pub fn on_response(&mut self, _status: u16) -> RetryDecision {
        self.attempts += 1;
        RetryDecision::NoRetry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_policy_every_attempt_is_final() {
        let mut s = RetryState::none();
        assert_eq!(s.on_response(503), RetryDecision::NoRetry);
        assert_eq!(s.on_failure(&AttemptFailure::RouteTimeout), RetryDecision::NoRetry);
        assert_eq!(s.attempts(), 2);
    }
}
