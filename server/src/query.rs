//! The query layer both APIs answer from — the JSON API and the UI, and Grafana's Pyroscope
//! data source: which span profiles, traces and series a selection covers, merged the same way
//! for both, so a selection gives the same totals and stacks whichever API asks.

use spanprof_proto::labels as wire;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::error::Result;
use crate::model::{Labels, ProfileId, TraceId, UNNAMED_SPAN, rescale_count};
use crate::selector::{NAME_LABEL, PROFILE_TYPE_LABEL, ProfileType, SPAN_NAME_LABEL, Selector};
use crate::store::{ProcessProfile, ProcessQuery, ProfileStore, SpanProfile, SpanSummary, Stacks};

/// The labels a span profile is selected by: its series labels, `service_name`, `span_name`
/// and `__name__` (span profiles hold CPU).
pub fn span_labels(s: &SpanSummary) -> Labels {
    let mut labels = s.labels.clone();
    labels.insert(wire::SERVICE_NAME.into(), s.service_name.clone());
    let name = crate::model::rollup_span_name(&s.span_name);
    labels.insert(SPAN_NAME_LABEL.into(), name.to_owned());
    labels.insert(NAME_LABEL.into(), crate::ingest::SPAN_PROFILE_TYPE.into());
    labels
}

/// The span profiles of `ids` that `selector` selects ([`Selector::matches_recorded`]), in the
/// order asked, each once.
pub fn span_profiles(store: &dyn ProfileStore, ids: &[ProfileId], selector: &Selector) -> Result<Vec<SpanProfile>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for id in ids {
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(p) = store.span_profile(id.clone())?.filter(|p| selector.matches_recorded(&span_labels(&p.summary)))
        {
            out.push(p);
        }
    }
    Ok(out)
}

/// The span profiles of a trace that `selector` selects ([`Selector::matches_recorded`]), oldest
/// first.
pub fn trace(store: &dyn ProfileStore, trace_id: TraceId, selector: &Selector) -> Result<Vec<SpanProfile>> {
    let mut profiles = store.trace(trace_id)?;
    profiles.retain(|p| selector.matches_recorded(&span_labels(&p.summary)));
    Ok(profiles)
}

/// Merges the stacks of several span profiles onto the first one's period (counts rounded as
/// the store's merge upon insert rounds them).
pub fn merge_spans(profiles: Vec<SpanProfile>) -> (u64, Stacks) {
    let period = profiles.first().map_or(crate::model::DEFAULT_PERIOD_NS, |p| p.summary.period_ns);
    let mut merged: HashMap<Vec<Arc<str>>, u64> = HashMap::new();
    for p in profiles {
        for (stack, count) in p.stacks {
            let c = rescale_count(count, p.summary.period_ns, period);
            let slot = merged.entry(stack).or_insert(0);
            *slot = slot.saturating_add(c);
        }
    }
    (period, merged.into_iter().collect())
}

/// The whole-process profile of the series `q` selects (span samples included unless the
/// selector leaves them out with `span_name=""`).
pub fn process(store: &dyn ProfileStore, q: &ProcessQuery) -> Result<Option<ProcessProfile>> {
    store.process_profile(q)
}

/// Every whole-process series' labels, once each, with the labels Pyroscope derives from the
/// profile type: `__profile_type__`, `__type__`, `__unit__`, `__period_type__`, `__period_unit__`.
pub fn series_labels(store: &dyn ProfileStore) -> Result<Vec<Labels>> {
    let unique: BTreeSet<Labels> = store.series()?.into_iter().collect();
    Ok(unique
        .into_iter()
        .map(|mut labels| {
            let t = ProfileType::of_series(&labels);
            labels.insert("__type__".into(), t.sample_type.clone());
            labels.insert("__unit__".into(), t.sample_unit.clone());
            labels.insert("__period_type__".into(), t.period_type.clone());
            labels.insert("__period_unit__".into(), t.period_unit.clone());
            labels.insert(PROFILE_TYPE_LABEL.into(), t.id);
            labels
        })
        .collect())
}

/// Label names of the series `selector` selects, sorted, once each.
pub fn label_names(store: &dyn ProfileStore, selector: &Selector) -> Result<Vec<String>> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    for labels in series_labels(store)?.iter().filter(|l| selector.matches(l)) {
        out.extend(labels.keys().cloned());
    }
    // Services that only sent span profiles before span rollups existed have no series.
    if selector.matchers.is_empty() && !store.services()?.is_empty() {
        out.insert(wire::SERVICE_NAME.into());
    }
    Ok(out.into_iter().collect())
}

/// Values of the label `name` over the series `selector` selects, sorted, once each.
pub fn label_values(store: &dyn ProfileStore, name: &str, selector: &Selector) -> Result<Vec<String>> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    for labels in series_labels(store)?.iter().filter(|l| selector.matches(l)) {
        if let Some(v) = labels.get(name) {
            out.insert(v.clone());
        }
    }
    if name == wire::SERVICE_NAME && selector.matchers.is_empty() {
        out.extend(store.services()?);
    }
    Ok(out.into_iter().collect())
}

/// The profile types of the series `selector` selects, sorted by ID.
pub fn profile_types(store: &dyn ProfileStore, selector: &Selector) -> Result<Vec<ProfileType>> {
    let types: BTreeSet<ProfileType> =
        store.series()?.iter().filter(|l| selector.matches(l)).map(ProfileType::of_series).collect();
    Ok(types.into_iter().collect())
}

/// How the points of one step add up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Aggregation {
    #[default]
    Sum,
    /// The mean over the series of a group that have data in the step.
    Average,
}

/// A time series query: the selected series' values per step, grouped by labels.
#[derive(Clone, Debug)]
pub struct SeriesQuery {
    pub process: ProcessQuery,
    /// The profile type's values: time types as nanoseconds (samples × period).
    pub profile_type: ProfileType,
    pub step_ms: u64,
    pub group_by: Vec<String>,
    pub aggregation: Aggregation,
    /// At most this many series, the largest first; 0 = all.
    pub limit: usize,
}

/// One series of an answer: the group's labels and `(step start ms, value)` points in time
/// order.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub points: Vec<(u64, f64)>,
}

/// The step a sample taken at `t` counts in, as Pyroscope places it: steps are named by their
/// end, `from + k × step`, and hold the samples of `(end − step, end]`; a time past the last step
/// within `until` counts in that last step.
pub fn step_of(t: u64, from: u64, until: u64, step: u64) -> u64 {
    let step = step.max(1);
    let last = from + until.saturating_sub(from) / step * step;
    let k = t.saturating_sub(from).div_ceil(step);
    from.saturating_add(k.saturating_mul(step)).min(last)
}

/// The selected series' values per step (see [`step_of`]), grouped by `group_by`, the largest
/// series first. The store keeps minute buckets: a bucket's value is spread evenly over the
/// steps its minute covers. Steps without data have no point.
pub fn series(store: &dyn ProfileStore, q: &SeriesQuery) -> Result<Vec<Series>> {
    let step = q.step_ms.max(1);
    let bucket_ms = crate::store::BUCKET_MS;
    let (from, until) = (q.process.from_ms, q.process.until_ms);
    // group → step → (sum, series seen in the step)
    let mut groups: BTreeMap<Labels, BTreeMap<u64, (f64, BTreeSet<Labels>)>> = BTreeMap::new();
    for s in store.process_series(&q.process)? {
        let group: Labels = q.group_by.iter().filter_map(|g| s.labels.get(g).map(|v| (g.clone(), v.clone()))).collect();
        let steps = groups.entry(group).or_default();
        for &(bucket, samples, period) in &s.points {
            let value = if q.profile_type.counts_samples() { samples as f64 * period as f64 } else { samples as f64 };
            let first = step_of(bucket.max(from), from, until, step);
            let last = step_of(bucket.saturating_add(bucket_ms - 1).min(until), from, until, step);
            let slots = (last - first) / step + 1;
            let share = value / slots as f64;
            for k in 0..slots {
                let slot = steps.entry(first + k * step).or_insert_with(|| (0.0, BTreeSet::new()));
                slot.0 += share;
                slot.1.insert(s.labels.clone());
            }
        }
    }
    let mut out: Vec<(f64, Series)> = groups
        .into_iter()
        .map(|(labels, steps)| {
            let points: Vec<(u64, f64)> = steps
                .into_iter()
                .map(|(t, (sum, seen))| match q.aggregation {
                    Aggregation::Sum => (t, sum),
                    Aggregation::Average => (t, sum / seen.len().max(1) as f64),
                })
                .collect();
            let total = points.iter().map(|p| p.1).sum::<f64>();
            (total, Series { labels, points })
        })
        .filter(|(_, s)| !s.points.is_empty())
        .collect();
    out.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.labels.cmp(&b.1.labels)));
    if q.limit > 0 {
        out.truncate(q.limit);
    }
    Ok(out.into_iter().map(|(_, s)| s).collect())
}

/// Span profiles in a time range whose labels `selector` selects, newest first, at most
/// `limit` (the heaviest are not sought: the listing is by time).
pub fn spans_in_range(
    store: &dyn ProfileStore,
    selector: &Selector,
    from_ms: u64,
    until_ms: u64,
    limit: usize,
) -> Result<Vec<SpanSummary>> {
    let mut out = Vec::new();
    let mut after = None;
    // Pages of the service's (or every) span profile, filtered here by the rest of the selector.
    for _ in 0..64 {
        let page = store.search_spans(&crate::store::SpanQuery {
            service: selector.required(wire::SERVICE_NAME).map(str::to_owned),
            span_name: selector.required(SPAN_NAME_LABEL).filter(|n| *n != UNNAMED_SPAN).map(str::to_owned),
            from_ms: Some(from_ms),
            until_ms: Some(until_ms),
            limit: 1000,
            after,
            ..Default::default()
        })?;
        out.extend(page.profiles.into_iter().filter(|s| selector.matches(&span_labels(s))));
        if out.len() >= limit {
            out.truncate(limit);
            break;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(id: u64, period_ns: u64, stacks: &[(&[&str], u64)]) -> SpanProfile {
        SpanProfile {
            summary: SpanSummary {
                profile_id: ProfileId::Span(id),
                trace_id: None,
                service_name: "ride".into(),
                span_name: String::new(),
                samples: stacks.iter().map(|s| s.1).sum(),
                period_ns,
                first_seen_ms: 0,
                last_seen_ms: 0,
                labels: Labels::new(),
            },
            stacks: stacks.iter().map(|(f, c)| (f.iter().map(|n| Arc::from(*n)).collect(), *c)).collect(),
        }
    }

    #[test]
    fn merging_spans_rounds_as_the_store_does() {
        // 3 samples at 15 ms are 4.5 samples at 10 ms: the store's merge rounds to 5; truncating
        // would say 4, and a trace view would disagree with the stored merge.
        let (period, stacks) =
            merge_spans(vec![profile(1, 10_000_000, &[(&["a"], 1)]), profile(2, 15_000_000, &[(&["a"], 3)])]);
        assert_eq!(period, 10_000_000);
        assert_eq!(stacks, vec![(vec![Arc::<str>::from("a")], 1 + rescale_count(3, 15_000_000, 10_000_000))]);
        assert_eq!(rescale_count(3, 15_000_000, 10_000_000), 5);
    }

    #[test]
    fn steps_are_named_by_their_end() {
        // Steps of 15 s from 1,000: (985, 1000], (1000, 16000], …
        assert_eq!(step_of(1_000, 1_000, 100_000, 15_000), 1_000);
        assert_eq!(step_of(1_001, 1_000, 100_000, 15_000), 16_000);
        assert_eq!(step_of(16_000, 1_000, 100_000, 15_000), 16_000);
        assert_eq!(step_of(16_001, 1_000, 100_000, 15_000), 31_000);
        // Past the last step within `until`: the last step.
        assert_eq!(step_of(99_999, 1_000, 100_000, 15_000), 91_000);
    }

    #[test]
    fn span_labels_name_unnamed_spans_as_their_rollup_does() {
        let p = profile(1, 10_000_000, &[]);
        let l = span_labels(&p.summary);
        assert_eq!(l[SPAN_NAME_LABEL], UNNAMED_SPAN);
        assert_eq!(l["service_name"], "ride");
        assert!(Selector::parse(r#"{service_name="ride", span_name!=""}"#).unwrap().matches(&l));
    }
}

/// One side of a diff, or any profile a query names: a span profile, a trace, or CPU of a
/// service over a time range (a span name's with `span_name`, optionally only its spans whose
/// own CPU is within a range).
#[derive(Clone, Debug)]
pub enum Subject {
    Profile(ProfileId),
    Trace(TraceId),
    Process(ProcessQuery),
    /// The span profiles of a span-name aggregate (its CPU filter included), merged.
    Spans(crate::aggregate::AggregateQuery),
}

/// A loaded subject: its stacks on one period, and how many span profiles went in (None for a
/// whole-process selection).
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub period_ns: u64,
    pub stacks: Stacks,
    pub span_profiles: Option<usize>,
}

impl Loaded {
    pub fn samples(&self) -> u64 {
        self.stacks.iter().fold(0u64, |a, (_, c)| a.saturating_add(*c))
    }
}

/// Loads a subject; a subject with no samples loads empty.
pub fn load(store: &dyn ProfileStore, subject: &Subject) -> Result<Loaded> {
    let spans = |profiles: Vec<SpanProfile>| {
        let n = profiles.len();
        let (period_ns, stacks) = merge_spans(profiles);
        Loaded { period_ns, stacks, span_profiles: Some(n) }
    };
    Ok(match subject {
        Subject::Profile(id) => spans(span_profiles(store, std::slice::from_ref(id), &Selector::all())?),
        Subject::Trace(t) => spans(trace(store, *t, &Selector::all())?),
        Subject::Process(q) => match process(store, q)? {
            Some(p) => Loaded { period_ns: p.period_ns, stacks: p.stacks, span_profiles: None },
            None => Loaded { period_ns: crate::model::DEFAULT_PERIOD_NS, ..Default::default() },
        },
        Subject::Spans(q) => match crate::aggregate::aggregate(store, q)? {
            Some(a) => Loaded { period_ns: a.period_ns, stacks: a.stacks, span_profiles: Some(a.spans as usize) },
            None => Loaded { period_ns: crate::model::DEFAULT_PERIOD_NS, span_profiles: Some(0), ..Default::default() },
        },
    })
}
