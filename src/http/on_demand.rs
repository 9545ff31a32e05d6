//! `envoy.filters.http.on_demand` for VHDS: a request whose `:authority` has no virtual host
//! in a route configuration with `vhds` asks the control plane for `<route config>/<host>` and
//! waits (bounded) for the answer before routing again.
//!
//! Only the miss path touches this (a mutex over the requested names); a routed request never
//! does.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// How long a request waits for VHDS to answer (Envoy waits until the stream times out; a
/// bound keeps a silent control plane from holding requests for minutes).
pub const ON_DEMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Most names requested on demand: each is a subscription for the life of the process, and
/// the `Host` header is client-controlled, so it is bounded (and hosts longer than a DNS name
/// with a port are never asked for).
pub const MAX_ON_DEMAND_NAMES: usize = 10_000;

/// The names requested on demand, shared by every worker and the config store.
pub struct OnDemandVhds {
    /// Name -> whether the control plane has answered since it was requested.
    names: Mutex<BTreeMap<String, bool>>,
    max_names: usize,
    changes: watch::Sender<u64>,
    updated: Notify,
}

impl Default for OnDemandVhds {
    fn default() -> Self {
        Self::with_limit(MAX_ON_DEMAND_NAMES)
    }
}

impl OnDemandVhds {
    /// A registry that accepts at most `max_names` names.
    pub fn with_limit(max_names: usize) -> Self {
        Self { names: Mutex::new(BTreeMap::new()), max_names, changes: watch::channel(0).0, updated: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, bool>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every name requested so far (they stay subscribed, as in Envoy).
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Changes whenever a new name is requested (the xDS client re-subscribes).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A VHDS response arrived: every pending name counts as answered; waiters re-route.
    pub fn updated(&self) {
        for answered in self.lock().values_mut() {
            *answered = true;
        }
        self.updated.notify_waiters();
    }

    /// Ask for `name` (`<route config>/<host>`) and wait for a VHDS response, at most
    /// `timeout`. Returns at once when the name was already answered (the host is unknown to
    /// the control plane) or the name budget is spent.
    pub async fn fetch(&self, name: String, timeout: Duration) {
        let notified = self.updated.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut names = self.lock();
            match names.get(&name) {
                Some(true) => return,
                Some(false) => {}
                None if names.len() >= self.max_names => return,
                None => {
                    names.insert(name, false);
                    self.changes.send_modify(|v| *v = v.wrapping_add(1));
                }
            }
        }
        let _ = tokio::time::timeout(timeout, notified).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_an_answer_then_remembers_it() {
        let od = std::sync::Arc::new(OnDemandVhds::with_limit(2));
        let mut changes = od.changes();
        let waiter = {
            let od = od.clone();
            tokio::spawn(async move { od.fetch("rc/a.com".into(), Duration::from_secs(30)).await })
        };
        // The client is told to subscribe; the request waits for the answer.
        tokio::time::timeout(Duration::from_secs(5), changes.changed()).await.unwrap().unwrap();
        assert_eq!(od.names(), vec!["rc/a.com".to_string()]);
        assert!(!waiter.is_finished());
        od.updated();
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        // Answered once: asking again returns at once (the host is unknown to the control plane).
        tokio::time::timeout(Duration::from_millis(100), od.fetch("rc/a.com".into(), Duration::from_secs(30)))
            .await
            .expect("no second wait");
    }

    #[tokio::test]
    async fn client_controlled_names_are_bounded() {
        let od = OnDemandVhds::with_limit(2);
        for host in ["a", "b", "c", "d"] {
            // Short timeout: nobody answers here.
            od.fetch(format!("rc/{host}"), Duration::from_millis(10)).await;
        }
        assert_eq!(od.names(), vec!["rc/a".to_string(), "rc/b".to_string()]);
        // Beyond the budget, no wait at all.
        tokio::time::timeout(Duration::from_millis(100), od.fetch("rc/e".into(), Duration::from_secs(30)))
            .await
            .expect("over budget: no wait");
    }
}
