//! Stats with Envoy's names. Every counter and gauge is sharded: one cache-padded slot per
//! worker (plus one for the main thread), so the request path never writes a cache line that
//! another worker writes. Scrapes sum the slots. Names and tags are fixed when a stat is
//! created (config load), never on the request path.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

thread_local! {
    /// Slot index of the current thread: 0 = main/control thread, 1..=N = workers.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Upper bound on worker slots (`--concurrency` is capped to this).
pub const MAX_WORKERS: usize = 64;

/// Mark the current thread as worker `index` (0-based) for stats sharding.
pub fn set_worker_slot(index: usize) {
    SLOT.with(|s| s.set((index + 1).min(MAX_WORKERS)));
}

/// The current thread's slot (0 = main thread, 1.. = worker index + 1).
pub fn current_slot() -> usize {
    SLOT.with(|s| s.get())
}

/// Eight cells on one cache line.
#[repr(align(64))]
#[derive(Default)]
struct Chunk([AtomicU64; 8]);

/// The cells of one or more stats, slot-major: each slot's cells start on their own cache line,
/// so workers never write the same line, and a group of stats (a cluster's) shares lines
/// within a slot instead of padding every counter.
struct Block {
    per_slot: usize,
    chunks: Box<[Chunk]>,
}

impl Block {
    fn new(slots: usize, stats: usize) -> Arc<Self> {
        let per_slot = stats.div_ceil(8).max(1);
        Arc::new(Block { per_slot, chunks: (0..slots * per_slot).map(|_| Chunk::default()).collect() })
    }

    #[inline]
    fn cell(&self, slot: usize, idx: usize) -> Option<&AtomicU64> {
        self.chunks.get(slot * self.per_slot + idx / 8).map(|c| &c.0[idx % 8])
    }

    fn sum(&self, idx: usize) -> u64 {
        let slots = self.chunks.len() / self.per_slot;
        (0..slots).filter_map(|s| self.cell(s, idx)).fold(0u64, |a, c| a.wrapping_add(c.load(Ordering::Relaxed)))
    }
}

/// A monotonically increasing counter, sharded per worker.
#[derive(Clone)]
pub struct Counter {
    block: Arc<Block>,
    idx: usize,
}

impl Counter {
    fn new(slots: usize) -> Self {
        Counter { block: Block::new(slots, 1), idx: 0 }
    }

    /// Add one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Add `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        // Only this thread writes its slot, so a relaxed load+store would do; fetch_add keeps
        // it correct even if two threads ever shared a slot.
        if let Some(c) = self.block.cell(current_slot(), self.idx) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Sum over all slots.
    pub fn value(&self) -> u64 {
        self.block.sum(self.idx)
    }

    /// Value of one worker's slot (0-based worker index).
    pub fn worker_value(&self, worker: usize) -> u64 {
        self.block.cell(worker + 1, self.idx).map(|c| c.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

/// A gauge, sharded per worker: each worker adds and subtracts on its own slot (two's
/// complement in the shared cell type).
#[derive(Clone)]
pub struct Gauge {
    block: Arc<Block>,
    idx: usize,
}

impl Gauge {
    fn new(slots: usize) -> Self {
        Gauge { block: Block::new(slots, 1), idx: 0 }
    }

    /// Add one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtract one.
    #[inline]
    pub fn dec(&self) {
        self.add(-1);
    }

    /// Add `n` (may be negative).
    #[inline]
    pub fn add(&self, n: i64) {
        if let Some(c) = self.block.cell(current_slot(), self.idx) {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Set the main-thread slot (for gauges owned by the control thread) to `v`.
    pub fn set(&self, v: i64) {
        let slots = self.block.chunks.len() / self.block.per_slot;
        for s in 0..slots {
            if let Some(c) = self.block.cell(s, self.idx) {
                c.store(if s == 0 { v as u64 } else { 0 }, Ordering::Relaxed);
            }
        }
    }

    /// Sum over all slots.
    pub fn value(&self) -> i64 {
        self.block.sum(self.idx) as i64
    }
}

/// A family of stats registered together (a cluster's): one block of cells, names rendered
/// from a shared prefix at scrape time instead of one stored name per stat.
pub struct StatGroup {
    block: Arc<Block>,
}

impl StatGroup {
    /// The counter at `idx` of the group's name list.
    pub fn counter(&self, idx: usize) -> Counter {
        Counter { block: self.block.clone(), idx }
    }

    /// The gauge at `idx` of the group's name list.
    pub fn gauge(&self, idx: usize) -> Gauge {
        Gauge { block: self.block.clone(), idx }
    }
}

/// A registered group.
struct Group {
    family: &'static str,
    tag: &'static str,
    value: Box<str>,
    /// (name after the prefix, is_gauge).
    names: &'static [(&'static str, bool)],
    block: Arc<Block>,
}

/// Kind of stat, for `/stats` and Prometheus `# TYPE`.
#[derive(Clone)]
enum Metric {
    Counter(Counter),
    Gauge(Gauge),
    /// A gauge read from its owner at scrape time (see [`Store::computed_gauge`]).
    Computed(ComputedGauge),
}

/// Reads a gauge's value at scrape time.
pub type ComputedGauge = Arc<dyn Fn() -> u64 + Send + Sync>;

/// One collected stat: (name, value, is_counter, prom name, tags). Values are `i128` so both
/// a sharded gauge's transiently negative sum and Envoy's full `u64` range (an unlimited
/// circuit breaker's `remaining_cx_pools` is 2^64-1) print as Envoy prints them.
type Collected = (String, i128, bool, String, Vec<(&'static str, String)>);

/// One registered stat: its Envoy name and its Prometheus name and tags.
#[derive(Clone)]
struct Entry {
    metric: Metric,
    prom_name: String,
    tags: Vec<(&'static str, String)>,
}

/// The stats store: owns the name -> stat map. Locked only when stats are created (config
/// load) or scraped (admin), never on the request path.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<BTreeMap<String, Entry>>>,
    /// Keyed by prefix and name list: two stat structs may share a prefix (an HCM's own stats
    /// and its fault filter's, both under `http.<prefix>.`).
    groups: Arc<Mutex<BTreeMap<(String, usize), Group>>>,
    slots: usize,
    sources: Arc<Mutex<Vec<Source>>>,
}

/// Stats owned elsewhere (e.g. the xDS client's atomics), read at scrape time:
/// `(envoy name, value, is_gauge)`.
pub type Source = Arc<dyn Fn() -> Vec<(String, i64, bool)> + Send + Sync>;

impl Store {
    /// A store with a slot per worker plus one for the main thread.
    pub fn new(workers: usize) -> Self {
        Store {
            inner: Arc::new(Mutex::new(BTreeMap::new())),
            groups: Arc::new(Mutex::new(BTreeMap::new())),
            slots: workers.clamp(1, MAX_WORKERS) + 1,
            sources: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Number of shard slots (workers + the main thread).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Get or create the group `<family>.<value>.<name>` for every name in `names`, with
    /// `value` extracted into the Prometheus tag `tag` (Envoy's tag extraction).
    pub fn group(
        &self,
        family: &'static str,
        tag: &'static str,
        value: &str,
        names: &'static [(&'static str, bool)],
    ) -> StatGroup {
        let key = (format!("{family}.{value}."), names.as_ptr() as usize);
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = groups.get(&key) {
            return StatGroup { block: g.block.clone() };
        }
        let block = Block::new(self.slots, names.len());
        groups.insert(key, Group { family, tag, value: value.into(), names, block: block.clone() });
        StatGroup { block }
    }

    /// Register stats owned elsewhere; they show in every output format.
    pub fn add_source(&self, source: Source) {
        self.sources.lock().unwrap_or_else(|e| e.into_inner()).push(source);
    }

    /// All stats, sorted by name.
    fn collect(&self) -> Vec<Collected> {
        let mut out: Vec<_> = {
            let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .map(|(name, e)| {
                    let (v, is_counter) = match &e.metric {
                        Metric::Counter(c) => (i128::from(c.value()), true),
                        Metric::Gauge(g) => (i128::from(g.value()), false),
                        Metric::Computed(f) => (i128::from(f()), false),
                    };
                    (name.clone(), v, is_counter, e.prom_name.clone(), e.tags.clone())
                })
                .collect()
        };
        {
            let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            for ((prefix, _), g) in groups.iter() {
                for (i, (n, gauge)) in g.names.iter().enumerate() {
                    // Gauges live in the same cells as two's complement; the cast reads both.
                    let v = i128::from(g.block.sum(i) as i64);
                    // `upstream_rq_2xx` -> `upstream_rq_xx{envoy_response_code_class="2"}`.
                    let b = n.as_bytes();
                    let class = (b.len() > 4 && n.ends_with("xx") && b[b.len() - 4] == b'_')
                        .then(|| b[b.len() - 3])
                        .filter(|c| (b'1'..=b'5').contains(c));
                    let prom = match class {
                        Some(c) => Prom::tagged(g.family, g.tag, &g.value, &format!("{}xx", &n[..n.len() - 3]))
                            .with_tag("envoy_response_code_class", &(c as char).to_string()),
                        None => Prom::tagged(g.family, g.tag, &g.value, n),
                    };
                    out.push((format!("{prefix}{n}"), v, !gauge, prom.name, prom.tags));
                }
            }
        }
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for src in sources {
            for (name, v, gauge) in src() {
                let prom = Prom::plain(&name);
                out.push((name, i128::from(v), !gauge, prom.name, prom.tags));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Get or create the counter `name`; `prom` gives the Prometheus base name and tags.
    pub fn counter(&self, name: &str, prom: Prom) -> Counter {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Entry { metric: Metric::Counter(c), .. }) = map.get(name) {
            return c.clone();
        }
        let c = Counter::new(self.slots);
        map.insert(
            name.to_string(),
            Entry { metric: Metric::Counter(c.clone()), prom_name: prom.name, tags: prom.tags },
        );
        c
    }

    /// Get or create the gauge `name`.
    pub fn gauge(&self, name: &str, prom: Prom) -> Gauge {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Entry { metric: Metric::Gauge(g), .. }) = map.get(name) {
            return g.clone();
        }
        let g = Gauge::new(self.slots);
        map.insert(name.to_string(), Entry { metric: Metric::Gauge(g.clone()), prom_name: prom.name, tags: prom.tags });
        g
    }

    /// Register (or replace) the gauge `name`, whose value `read` computes at scrape time:
    /// for state that already lives in shared atomics (a circuit breaker's counts), so the
    /// request path pays nothing for the gauge. Registering a name again (a cluster replaced
    /// by CDS) points it at the new owner.
    pub fn computed_gauge(&self, name: &str, prom: Prom, read: ComputedGauge) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(name.to_string(), Entry { metric: Metric::Computed(read), prom_name: prom.name, tags: prom.tags });
    }

    /// Current value of a stat by its Envoy name (counters and gauges), if it exists
    /// (saturated to `i64`).
    pub fn value(&self, name: &str) -> Option<i64> {
        self.collect().into_iter().find(|s| s.0 == name).map(|s| i64::try_from(s.1).unwrap_or(i64::MAX))
    }

    /// Envoy's `/stats` text format: `name: value` per line, sorted. `filter` is a regex
    /// (Envoy's default `filter=` semantics); `used_only` skips counters never incremented.
    pub fn render_text(&self, filter: Option<&regex::Regex>, used_only: bool) -> String {
        let mut out = String::new();
        for (name, v, is_counter, _, _) in self.collect() {
            if filter.is_some_and(|f| !f.is_match(&name)) || (used_only && is_counter && v == 0) {
                continue;
            }
            let _ = writeln!(out, "{name}: {v}");
        }
        out
    }

    /// Envoy's `/stats?format=json`: `{"stats":[{"name":..,"value":..}]}`.
    pub fn render_json(&self, filter: Option<&regex::Regex>, used_only: bool) -> serde_json::Value {
        let stats: Vec<serde_json::Value> = self
            .collect()
            .into_iter()
            .filter(|(name, v, is_counter, _, _)| {
                !(filter.is_some_and(|f| !f.is_match(name)) || (used_only && *is_counter && *v == 0))
            })
            .map(|(name, v, _, _, _)| match u64::try_from(v) {
                Ok(v) => serde_json::json!({"name": name, "value": v}),
                Err(_) => serde_json::json!({"name": name, "value": v as i64}),
            })
            .collect();
        serde_json::json!({ "stats": stats })
    }

    /// Prometheus text exposition with Envoy's names (`envoy_cluster_upstream_rq_total{envoy_cluster_name="x"}`).
    /// Hand-written rather than via prometheus-client because that crate appends `_total` to
    /// every counter, which would break Envoy's metric names that dashboards expect.
    pub fn render_prometheus(&self, used_only: bool) -> String {
        // Group by Prometheus name so each family gets one TYPE line.
        let mut families: BTreeMap<String, (bool, Vec<String>)> = BTreeMap::new();
        for (_, v, is_counter, prom_name, tags) in self.collect() {
            if used_only && is_counter && v == 0 {
                continue;
            }
            let mut line = prom_name.clone();
            if !tags.is_empty() {
                line.push('{');
                for (i, (k, val)) in tags.iter().enumerate() {
                    if i > 0 {
                        line.push(',');
                    }
                    let _ = write!(line, "{k}=\"{}\"", escape_label(val));
                }
                line.push('}');
            }
            let _ = write!(line, " {v}");
            families.entry(prom_name).or_insert((is_counter, Vec::new())).1.push(line);
        }
        let mut out = String::new();
        for (name, (is_counter, lines)) in families {
            let _ = writeln!(out, "# TYPE {name} {}", if is_counter { "counter" } else { "gauge" });
            for l in lines {
                out.push_str(&l);
                out.push('\n');
            }
        }
        out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Prometheus name and tags for a stat, following Envoy's default tag extraction.
#[derive(Clone)]
pub struct Prom {
    name: String,
    tags: Vec<(&'static str, String)>,
}

impl Prom {
    /// A stat with no extracted tags: `server.live` -> `envoy_server_live`.
    pub fn plain(envoy_name: &str) -> Prom {
        Prom { name: sanitize(&format!("envoy_{envoy_name}")), tags: Vec::new() }
    }

    /// A stat `<family>.<tag value>.<rest>` whose tag value is extracted into `tag`:
    /// `cluster.backend.upstream_rq_total` -> `envoy_cluster_upstream_rq_total{envoy_cluster_name="backend"}`.
    pub fn tagged(family: &str, tag: &'static str, value: &str, rest: &str) -> Prom {
        Prom { name: sanitize(&format!("envoy_{family}_{rest}")), tags: vec![(tag, value.to_string())] }
    }

    /// The same family and tags with `rest` as the last name part
    /// (`envoy_http_rds` + `update_success` -> `envoy_http_rds_update_success`).
    pub fn renamed(mut self, rest: &str) -> Prom {
        let base = self.name.trim_end_matches('_');
        self.name = sanitize(&format!("{base}_{rest}"));
        self
    }

    /// Add one more tag (e.g. `envoy_response_code`).
    pub fn with_tag(mut self, tag: &'static str, value: &str) -> Prom {
        self.tags.push((tag, value.to_string()));
        self
    }
}

/// Prometheus metric names allow `[a-zA-Z0-9_:]`; Envoy maps everything else to `_`.
fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }).collect()
}

/// Declares a stats struct the way Envoy's `ALL_*_STATS` macros do: one list of
/// `field: Counter|Gauge = "name"`, registered as one [`StatGroup`] under `<family>.<value>.`
/// (with `value` extracted into the Prometheus tag `tag`), so a scope's stats are declared
/// once and cost one block of cells.
#[macro_export]
macro_rules! stats_struct {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident : $kind:ident = $stat:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$fmeta])* pub $field: $crate::stats::$kind, )*
        }
        impl $name {
            /// The stat names after the scope's prefix, and whether each is a gauge.
            pub const NAMES: &'static [(&'static str, bool)] = &[ $( ($stat, $crate::stats_struct!(@gauge $kind)) ),* ];

            /// Register (or find again) these stats under `<family>.<value>.`.
            pub fn new(store: &$crate::stats::Store, family: &'static str, tag: &'static str, value: &str) -> Self {
                let g = store.group(family, tag, value, Self::NAMES);
                let mut i = 0usize;
                let mut next = move || {
                    i += 1;
                    i - 1
                };
                $name { $( $field: $crate::stats_struct!(@make g, $kind, next()), )* }
            }
        }
    };
    (@gauge Counter) => { false };
    (@gauge Gauge) => { true };
    (@make $g:ident, Counter, $i:expr) => { $g.counter($i) };
    (@make $g:ident, Gauge, $i:expr) => { $g.gauge($i) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_over_worker_slots() {
        let store = Store::new(2);
        let c = store.counter(
            "cluster.a.upstream_rq_total",
            Prom::tagged("cluster", "envoy_cluster_name", "a", "upstream_rq_total"),
        );
        c.inc();
        let c2 = c.clone();
        std::thread::spawn(move || {
            set_worker_slot(1);
            c2.add(5);
        })
        .join()
        .unwrap();
        assert_eq!(c.value(), 6);
        assert_eq!(c.worker_value(1), 5);
        assert_eq!(c.worker_value(0), 0);
        assert_eq!(store.render_text(None, false), "cluster.a.upstream_rq_total: 6\n");
        let prom = store.render_prometheus(false);
        assert!(prom.contains("# TYPE envoy_cluster_upstream_rq_total counter\n"), "{prom}");
        assert!(prom.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"a\"} 6\n"), "{prom}");
    }

    #[test]
    fn groups_share_a_block_and_render_envoy_names() {
        static NAMES: &[(&str, bool)] =
            &[("upstream_rq_total", false), ("upstream_rq_2xx", false), ("cx_active", true)];
        let store = Store::new(2);
        let g = store.group("cluster", "envoy_cluster_name", "svc", NAMES);
        g.counter(0).add(3);
        g.counter(1).inc();
        g.gauge(2).dec();
        // Registering the same group again gives the same cells.
        store.group("cluster", "envoy_cluster_name", "svc", NAMES).counter(0).inc();
        let text = store.render_text(None, false);
        assert_eq!(
            text,
            "cluster.svc.cx_active: -1\ncluster.svc.upstream_rq_2xx: 1\ncluster.svc.upstream_rq_total: 4\n"
        );
        let prom = store.render_prometheus(false);
        assert!(
            prom.contains("envoy_cluster_upstream_rq_xx{envoy_cluster_name=\"svc\",envoy_response_code_class=\"2\"} 1"),
            "{prom}"
        );
        assert!(prom.contains("# TYPE envoy_cluster_cx_active gauge"), "{prom}");
        assert_eq!(store.value("cluster.svc.upstream_rq_total"), Some(4));
    }

    #[test]
    fn used_only_and_filter() {
        let store = Store::new(1);
        store.counter("a.used", Prom::plain("a.used")).inc();
        store.counter("a.unused", Prom::plain("a.unused"));
        store.gauge("b.gauge", Prom::plain("b.gauge"));
        let text = store.render_text(None, true);
        assert_eq!(text, "a.used: 1\nb.gauge: 0\n");
        let re = regex::Regex::new("^a\\.").unwrap();
        assert_eq!(store.render_text(Some(&re), false), "a.unused: 0\na.used: 1\n");
    }
}
