//! The listener manager (main thread): turns the desired set of listeners into worker
//! commands. New listeners get one SO_REUSEPORT socket per worker; a changed listener on the
//! same address keeps its sockets and swaps the runtime new connections get, while the old
//! generation's connections drain; a removed listener stops accepting and drains.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;

use crate::listener::{bind_reuseport, ListenerImpl};
use crate::worker::WorkerCommand;

/// One active listener.
struct Active {
    runtime: Arc<ListenerImpl>,
    bound: SocketAddr,
}

/// Owns the active listeners and the workers' command channels.
pub struct ListenerManager {
    workers: Vec<UnboundedSender<WorkerCommand>>,
    active: HashMap<String, Active>,
    /// Shared with admin (`/listeners`): name -> bound address.
    bound: Arc<Mutex<Vec<(String, SocketAddr)>>>,
}

impl ListenerManager {
    /// A manager driving these workers.
    pub fn new(workers: Vec<UnboundedSender<WorkerCommand>>, bound: Arc<Mutex<Vec<(String, SocketAddr)>>>) -> Self {
        ListenerManager { workers, active: HashMap::new(), bound }
    }

    /// Bind `l` once per worker; port 0 is resolved by the first bind.
    fn bind_all(&self, l: &ListenerImpl) -> std::io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
        let backlog = l.config.tcp_backlog_size.unwrap_or(1024);
        let mut addr = l.config.address;
        let mut socks = Vec::with_capacity(self.workers.len());
        for i in 0..self.workers.len() {
            let s = bind_reuseport(addr, backlog)?;
            if i == 0 {
                addr = s.local_addr()?;
            }
            socks.push(s);
        }
        Ok((addr, socks))
    }

    /// Add or replace one listener. Errors (bind failures) leave the previous state serving.
    pub fn upsert(&mut self, l: Arc<ListenerImpl>) -> Result<SocketAddr, String> {
        let name = l.config.name.clone();
        if let Some(old) = self.active.get(&name) {
            if Arc::ptr_eq(&old.runtime, &l) {
                return Ok(old.bound);
            }
            let same_addr = old.runtime.config.address == l.config.address;
            if same_addr {
                for w in &self.workers {
                    let _ = w.send(WorkerCommand::UpdateListener(name.clone(), l.clone()));
                }
                let _ = old.runtime.drain.send(true);
                let bound = old.bound;
                self.active.insert(name, Active { runtime: l, bound });
                self.publish();
                return Ok(bound);
            }
        }
        let (bound, socks) =
            self.bind_all(&l).map_err(|e| format!("cannot bind listener '{name}' to {}: {e}", l.config.address))?;
        if let Some(old) = self.active.remove(&name) {
            for w in &self.workers {
                let _ = w.send(WorkerCommand::RemoveListener(name.clone()));
            }
            let _ = old.runtime.drain.send(true);
        }
        for (w, s) in self.workers.iter().zip(socks) {
            let _ = w.send(WorkerCommand::AddListener(l.clone(), s));
        }
        tracing::info!("listener '{name}' on {bound}");
        self.active.insert(name, Active { runtime: l, bound });
        self.publish();
        Ok(bound)
    }

    /// Remove a listener: stop accepting, drain its connections.
    pub fn remove(&mut self, name: &str) {
        if let Some(old) = self.active.remove(name) {
            for w in &self.workers {
                let _ = w.send(WorkerCommand::RemoveListener(name.to_string()));
            }
            let _ = old.runtime.drain.send(true);
            tracing::info!("listener '{name}' removed");
            self.publish();
        }
    }

    /// Names of active listeners.
    pub fn names(&self) -> Vec<String> {
        self.active.keys().cloned().collect()
    }

    /// The active runtime of `name`.
    pub fn get(&self, name: &str) -> Option<Arc<ListenerImpl>> {
        self.active.get(name).map(|a| a.runtime.clone())
    }

    fn publish(&self) {
        let mut v: Vec<(String, SocketAddr)> = self.active.iter().map(|(n, a)| (n.clone(), a.bound)).collect();
        v.sort();
        *self.bound.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }
}
