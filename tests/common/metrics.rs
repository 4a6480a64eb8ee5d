//! What the crate recorded, read through metrics-util's `DebuggingRecorder`: counters by
//! name and labels, histogram samples by name and one label.
//!
//! A snapshot of the debugging recorder drains it (counters swap back to 0, histograms are
//! cleared), so [`Recorded`] adds every snapshot into running totals: reading twice never
//! loses a count.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// The totals one debugging recorder has seen, read on demand.
pub struct Recorded {
    snapshotter: Snapshotter,
    totals: Mutex<Totals>,
}

/// A metric's labels, sorted by key.
type Labels = Vec<(String, String)>;

#[derive(Default)]
struct Totals {
    /// `name{k=v,...}` (labels sorted) to the sum of its increments.
    counters: BTreeMap<String, u64>,
    /// Histogram name to each sample with its labels.
    histograms: BTreeMap<String, Vec<(Labels, f64)>>,
}

impl Recorded {
    /// A fresh recorder (to install, globally or on one thread) and the totals it feeds.
    pub fn new() -> (DebuggingRecorder, Self) {
        let recorder = DebuggingRecorder::new();
        let recorded = Self {
            snapshotter: recorder.snapshotter(),
            totals: Mutex::default(),
        };
        (recorder, recorded)
    }

    /// This process's global recorder, installed on first use. Panics if another recorder
    /// was installed first: the numbers would silently be someone else's.
    pub fn global() -> &'static Self {
        static GLOBAL: OnceLock<Recorded> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let (recorder, recorded) = Self::new();
            recorder
                .install()
                .expect("no other metrics recorder in this test process");
            recorded
        })
    }

    /// Adds what was recorded since the last look into the totals.
    fn drain(&self) -> std::sync::MutexGuard<'_, Totals> {
        let mut totals = self.totals.lock().unwrap();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let (_, key) = key.into_parts();
            let mut labels: Labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            match value {
                DebugValue::Counter(n) => {
                    let joined: Vec<String> =
                        labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let name = format!("{}{{{}}}", key.name(), joined.join(","));
                    *totals.counters.entry(name).or_default() += n;
                }
                DebugValue::Histogram(samples) => totals
                    .histograms
                    .entry(key.name().to_owned())
                    .or_default()
                    .extend(
                        samples
                            .into_iter()
                            .map(|s| (labels.clone(), s.into_inner())),
                    ),
                DebugValue::Gauge(_) => {}
            }
        }
        totals
    }

    /// The counter `name{k=v,...}`, labels sorted by key (`name{}` without labels); 0 if
    /// it was never incremented.
    pub fn counter(&self, key: &str) -> u64 {
        self.drain().counters.get(key).copied().unwrap_or(0)
    }

    /// The counter `name` summed over every set of labels.
    pub fn counter_total(&self, name: &str) -> u64 {
        self.drain()
            .counters
            .iter()
            .filter(|(k, _)| k.split_once('{').is_some_and(|(n, _)| n == name))
            .map(|(_, n)| n)
            .sum()
    }

    /// The samples of histogram `name` whose label `label` is `value`.
    pub fn histogram(&self, name: &str, label: &str, value: &str) -> Vec<f64> {
        self.drain()
            .histograms
            .get(name)
            .map(|samples| {
                samples
                    .iter()
                    .filter(|(labels, _)| labels.iter().any(|(k, v)| k == label && v == value))
                    .map(|(_, s)| *s)
                    .collect()
            })
            .unwrap_or_default()
    }
}
