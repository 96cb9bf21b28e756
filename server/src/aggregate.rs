//! Span-name aggregates: every span profile of a span name (or of any selection of span
//! rollups) in a time range as one answer — how many, their CPU distribution, the heaviest, and
//! their merged flame graph — read from the rollups and the span index the store keeps at
//! insert, never from the span profiles one by one (unless a CPU filter picks a subset).

use serde::Serialize;

use crate::error::Result;
use crate::model::{ProfileId, rescale_count};
use crate::query::{self, merge_spans};
use crate::selector::Selector;
use crate::store::{ProcessQuery, ProfileStore, SpanStat, Stacks};

/// Which spans an aggregate covers: those counted in the span rollups `selector` selects, last
/// seen in a minute bucket started in `[from_ms, until_ms]`, whose own CPU is within
/// `[min_cpu_ns, max_cpu_ns]`.
#[derive(Clone, Debug)]
pub struct AggregateQuery {
    pub selector: Selector,
    pub from_ms: u64,
    pub until_ms: u64,
    pub min_cpu_ns: u64,
    /// `u64::MAX`: no upper bound.
    pub max_cpu_ns: u64,
}

impl AggregateQuery {
    /// Whether the CPU range leaves any span out (then the flame graph merges the profiles in it).
    pub fn filtered(&self) -> bool {
        self.min_cpu_ns > 0 || self.max_cpu_ns != u64::MAX
    }

    fn rollups(&self) -> ProcessQuery {
        ProcessQuery { selector: self.selector.clone(), from_ms: self.from_ms, until_ms: self.until_ms }
    }

    fn covers(&self, s: &SpanStat) -> bool {
        (self.min_cpu_ns..=self.max_cpu_ns).contains(&s.cpu_ns())
    }
}

/// How many heaviest spans an aggregate names.
pub const HEAVIEST: usize = 10;
/// Most span profiles a CPU-filtered aggregate merges (their stacks are read one by one).
pub const MAX_FILTERED_SPANS: usize = 100_000;
/// Bins of one sample's width up to this many samples; wider, logarithmic bins above.
const LINEAR_BINS: u64 = 40;

/// The answer: counts, the per-span CPU distribution, the heaviest spans and the merged stacks.
#[derive(Clone, Debug, Serialize)]
pub struct Aggregate {
    /// Span profiles covered.
    pub spans: u64,
    /// Span profiles of the selection in the range before the CPU filter.
    pub spans_in_range: u64,
    /// Samples of the covered spans, on `period_ns`.
    pub samples: u64,
    pub cpu_ns: u64,
    pub period_ns: u64,
    pub distribution: Distribution,
    /// The covered spans per span name, most CPU first.
    pub span_names: Vec<SpanNameShare>,
    pub heaviest: Vec<HeavySpan>,
    /// Span profiles the flame graph merged one by one (a CPU filter), when it did not come from
    /// the rollups; capped at [`MAX_FILTERED_SPANS`].
    pub merged_profiles: Option<usize>,
    #[serde(skip)]
    pub stacks: Stacks,
}

/// Per-span CPU: percentiles (nearest rank) and a histogram.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Distribution {
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub histogram: Vec<Bin>,
}

/// Spans whose CPU is in `[from_ns, to_ns)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Bin {
    pub from_ns: u64,
    pub to_ns: u64,
    pub spans: u64,
}

/// The covered spans of one span name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SpanNameShare {
    pub span_name: String,
    pub spans: u64,
    pub cpu_ns: u64,
    pub p50_ns: u64,
    pub max_ns: u64,
}

/// One of the heaviest spans, with what its profile's link needs.
#[derive(Clone, Debug, Serialize)]
pub struct HeavySpan {
    pub profile_id: String,
    pub cpu_ns: u64,
    pub samples: u64,
    pub last_seen_ms: u64,
    pub trace_id: Option<String>,
    pub span_name: String,
}

/// The aggregate of `q`; `None` when no span is covered.
pub fn aggregate(store: &dyn ProfileStore, q: &AggregateQuery) -> Result<Option<Aggregate>> {
    let mut stats = store.span_stats(&q.rollups())?;
    let spans_in_range = stats.len() as u64;
    stats.retain(|s| q.covers(s));
    if stats.is_empty() {
        return Ok(None);
    }
    let spans = stats.len() as u64;
    let period_ns =
        stats.iter().map(|s| s.period_ns).filter(|&p| p > 0).min().unwrap_or(crate::model::DEFAULT_PERIOD_NS);
    let samples = stats.iter().fold(0u64, |a, s| a.saturating_add(rescale_count(s.samples, s.period_ns, period_ns)));
    let cpu_ns = stats.iter().fold(0u64, |a, s| a.saturating_add(s.cpu_ns()));
    let distribution = distribution(stats.iter().map(SpanStat::cpu_ns).collect(), period_ns);
    let span_names = match stats.first() {
        // One name (a span name's aggregate): its share is the whole.
        Some(first) if stats.iter().all(|s| s.span_name == first.span_name) => vec![SpanNameShare {
            span_name: first.span_name.clone(),
            spans,
            cpu_ns,
            p50_ns: distribution.p50_ns,
            max_ns: distribution.max_ns,
        }],
        _ => span_names(&stats, period_ns),
    };

    // Heaviest first; equal CPU: the latest, then by ID, so the answer is stable. Only the first
    // HEAVIEST are put in order (the rest are merged in any order, or not read at all).
    let heavier = |a: &SpanStat, b: &SpanStat| {
        (b.cpu_ns(), b.last_seen_ms).cmp(&(a.cpu_ns(), a.last_seen_ms)).then_with(|| a.profile_id.cmp(&b.profile_id))
    };
    if stats.len() > HEAVIEST {
        stats.select_nth_unstable_by(HEAVIEST, heavier);
    }
    let top = stats.len().min(HEAVIEST);
    stats[..top].sort_unstable_by(heavier);
    let mut heaviest = Vec::with_capacity(HEAVIEST);
    for s in stats.iter().take(HEAVIEST) {
        let summary = store.span_profile(s.profile_id.clone())?.map(|p| p.summary);
        heaviest.push(HeavySpan {
            profile_id: s.profile_id.to_string(),
            cpu_ns: s.cpu_ns(),
            samples: s.samples,
            last_seen_ms: s.last_seen_ms,
            trace_id: summary.as_ref().and_then(|p| p.trace_id).map(|t| t.to_string()),
            span_name: summary.map(|p| p.span_name).unwrap_or_else(|| s.span_name.clone()),
        });
    }

    let (stacks, merged_profiles) = if q.filtered() {
        let ids: Vec<ProfileId> = stats.into_iter().take(MAX_FILTERED_SPANS).map(|s| s.profile_id).collect();
        let profiles = query::span_profiles(store, &ids, &Selector::all())?;
        let n = profiles.len();
        let (period, stacks) = merge_spans(profiles);
        (rescaled_stacks(stacks, period, period_ns), Some(n))
    } else {
        match store.process_profile(&q.rollups())? {
            Some(p) => (rescaled_stacks(p.stacks, p.period_ns, period_ns), None),
            None => (Vec::new(), None),
        }
    };
    Ok(Some(Aggregate {
        spans,
        spans_in_range,
        samples,
        cpu_ns,
        period_ns,
        distribution,
        span_names,
        heaviest,
        merged_profiles,
        stacks,
    }))
}

/// The spans per span name, most CPU first (then by name).
fn span_names(stats: &[SpanStat], unit_ns: u64) -> Vec<SpanNameShare> {
    let mut by_name: std::collections::BTreeMap<&str, Vec<u64>> = std::collections::BTreeMap::new();
    for s in stats {
        by_name.entry(s.span_name.as_str()).or_default().push(s.cpu_ns());
    }
    let mut out: Vec<SpanNameShare> = by_name
        .into_iter()
        .map(|(name, values)| {
            let cpu_ns = values.iter().fold(0u64, |a, v| a.saturating_add(*v));
            let spans = values.len() as u64;
            let d = distribution(values, unit_ns);
            SpanNameShare { span_name: name.to_owned(), spans, cpu_ns, p50_ns: d.p50_ns, max_ns: d.max_ns }
        })
        .collect();
    out.sort_by(|a, b| b.cpu_ns.cmp(&a.cpu_ns).then_with(|| a.span_name.cmp(&b.span_name)));
    out
}

fn rescaled_stacks(mut stacks: Stacks, from: u64, to: u64) -> Stacks {
    if from != to {
        for s in &mut stacks {
            s.1 = rescale_count(s.1, from, to);
        }
    }
    stacks
}

/// The distribution of per-span CPU values (`unit_ns`: the sampling period, the values' step).
pub fn distribution(mut values: Vec<u64>, unit_ns: u64) -> Distribution {
    if values.is_empty() {
        return Distribution::default();
    }
    values.sort_unstable();
    let rank = |p: u64| {
        // Nearest rank: the smallest value with at least p % of the values at or below it.
        let n = values.len() as u64;
        let r = (p * n).div_ceil(100).clamp(1, n);
        values[(r - 1) as usize]
    };
    Distribution {
        min_ns: values[0],
        p50_ns: rank(50),
        p90_ns: rank(90),
        p99_ns: rank(99),
        max_ns: values[values.len() - 1],
        histogram: histogram(&values, unit_ns.max(1)),
    }
}

/// Bins over sorted `values`: one per sample count while the largest is at most
/// [`LINEAR_BINS`] samples (CPU at 100 Hz comes in 10 ms steps), otherwise bounds on a 1-1.5-2-3-5
/// logarithmic scale (a request's CPU has a long tail), from the smallest value's bin to the
/// largest's, empty bins included so the plot's axis is continuous.
fn histogram(values: &[u64], unit: u64) -> Vec<Bin> {
    let (Some(&lo), Some(&hi)) = (values.first(), values.last()) else { return Vec::new() };
    let bounds: Vec<u64> = if hi / unit <= LINEAR_BINS {
        (lo / unit..=hi / unit + 1).map(|k| k * unit).collect()
    } else {
        let mut b = vec![0];
        let mut decade = 1u64;
        'outer: loop {
            for m in [10, 15, 20, 30, 50] {
                let bound = decade.saturating_mul(m) / 10 * unit;
                if bound > *b.last().unwrap_or(&0) {
                    b.push(bound);
                }
                if bound > hi || bound == u64::MAX {
                    break 'outer;
                }
            }
            decade = decade.saturating_mul(10);
        }
        // From the bin holding the smallest value.
        let first = b.partition_point(|&x| x <= lo).saturating_sub(1);
        b.split_off(first)
    };
    let mut bins: Vec<Bin> = bounds.windows(2).map(|w| Bin { from_ns: w[0], to_ns: w[1], spans: 0 }).collect();
    let mut i = 0;
    for &v in values {
        while i + 1 < bins.len() && v >= bins[i].to_ns {
            i += 1;
        }
        bins[i].spans += 1;
    }
    bins
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS10: u64 = 10_000_000;

    #[test]
    fn percentiles_are_nearest_rank() {
        let d = distribution((1..=100).map(|k| k * MS10).collect(), MS10);
        assert_eq!(
            (d.min_ns, d.p50_ns, d.p90_ns, d.p99_ns, d.max_ns),
            (MS10, 50 * MS10, 90 * MS10, 99 * MS10, 100 * MS10)
        );
        let d = distribution(vec![3 * MS10], MS10);
        assert_eq!((d.p50_ns, d.p99_ns), (3 * MS10, 3 * MS10));
        assert_eq!(distribution(Vec::new(), MS10), Distribution::default());
    }

    #[test]
    fn few_samples_get_one_bin_per_sample_count() {
        let d = distribution(vec![MS10, MS10, 2 * MS10, 4 * MS10], MS10);
        let bins: Vec<(u64, u64, u64)> =
            d.histogram.iter().map(|b| (b.from_ns / MS10, b.to_ns / MS10, b.spans)).collect();
        assert_eq!(bins, [(1, 2, 2), (2, 3, 1), (3, 4, 0), (4, 5, 1)]);
    }

    #[test]
    fn long_tails_get_logarithmic_bins_that_hold_every_value() {
        let values: Vec<u64> = [1, 2, 2, 3, 7, 45, 46, 1_000, 20_000].iter().map(|k| k * MS10).collect();
        let d = distribution(values.clone(), MS10);
        assert_eq!(d.histogram.iter().map(|b| b.spans).sum::<u64>(), values.len() as u64);
        assert!(d.histogram.len() <= 30, "{}", d.histogram.len());
        for w in d.histogram.windows(2) {
            assert_eq!(w[0].to_ns, w[1].from_ns, "contiguous");
        }
        let first = d.histogram[0];
        assert!(first.from_ns <= MS10 && MS10 < first.to_ns);
        let last = d.histogram[d.histogram.len() - 1];
        assert!(last.from_ns <= 20_000 * MS10 && 20_000 * MS10 < last.to_ns);
        for v in values {
            let bin = d.histogram.iter().find(|b| b.from_ns <= v && v < b.to_ns);
            assert!(bin.is_some_and(|b| b.spans > 0), "{v} is in a counted bin");
        }
    }
}
