//! The JSON query API: span profiles, traces, services, labels, span-name aggregates and diffs.

use super::*;

/// A span profile's metadata as the API shows it.
#[derive(Serialize)]
pub(super) struct SummaryJson<'a> {
    profile_id: String,
    trace_id: Option<String>,
    service_name: &'a str,
    span_name: &'a str,
    samples: u64,
    cpu_ns: u64,
    first_seen_ms: u64,
    last_seen_ms: u64,
    labels: &'a std::collections::BTreeMap<String, String>,
}

pub(super) fn summary_json(s: &SpanSummary) -> SummaryJson<'_> {
    SummaryJson {
        profile_id: s.profile_id.to_string(),
        trace_id: s.trace_id.map(|t| t.to_string()),
        service_name: &s.service_name,
        span_name: &s.span_name,
        samples: s.samples,
        cpu_ns: s.samples.saturating_mul(s.period_ns),
        first_seen_ms: s.first_seen_ms,
        last_seen_ms: s.last_seen_ms,
        labels: &s.labels,
    }
}

pub(super) async fn list_profiles(State(s): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let started = Instant::now();
    let query = (|| -> Result<SpanQuery, Error> {
        let now = now_ms();
        let nonempty = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
        Ok(SpanQuery {
            service: nonempty("service").or_else(|| nonempty("service_name")),
            span_name: nonempty("span_name"),
            trace_id: nonempty("trace_id")
                .map(|t| TraceId::parse(&t).ok_or_else(|| bad_query(format!("trace_id {t:?} is not 32 hex digits"))))
                .transpose()?,
            from_ms: nonempty("from").map(|v| parse_time(&v, now, "from")).transpose()?,
            until_ms: nonempty("until").map(|v| parse_time(&v, now, "until")).transpose()?,
            min_samples: nonempty("min_samples")
                .map(|v| v.parse().map_err(|_| bad_query(format!("min_samples {v:?} is not a number"))))
                .transpose()?
                .unwrap_or(0),
            limit: nonempty("limit")
                .map(|v| match v.parse::<usize>() {
                    Ok(n) if (1..=1000).contains(&n) => Ok(n),
                    _ => Err(bad_query(format!("limit {v:?} is not in 1..=1000"))),
                })
                .transpose()?
                .unwrap_or(50),
            after: nonempty("cursor")
                .map(|c| Cursor::decode(&c).ok_or_else(|| bad_query(format!("invalid cursor {c:?}"))))
                .transpose()?,
        })
    })();
    let query = match query {
        Ok(q) => q,
        Err(e) => return fail(&s, e),
    };
    let store = s.store.clone();
    let (page, partial) = match blocking_partial(move || store.search_spans(&query)).await {
        (Ok(p), partial) => (p, partial),
        (Err(e), _) => return fail(&s, e),
    };
    let mut body = json!({
        "profiles": page.profiles.iter().map(summary_json).collect::<Vec<_>>(),
        "next_cursor": page.next.map(|c| c.encode()),
    });
    if let Some(why) = &partial {
        body["partial"] = json!(true);
        body["partial_reason"] = json!(why);
    }
    s.metrics.observe_query("list_profiles", started.elapsed().as_secs_f64());
    axum::Json(body).into_response()
}

pub(super) async fn get_profile(
    State(s): St,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let pid = match ProfileId::parse(&id) {
        Ok(pid) => pid,
        Err(why) => return invalid_id(&s, format!("{id:?} is no profile ID: {why}")),
    };
    let rendering = match Rendering::from_query(&q) {
        Ok(r) => r,
        Err(e) => return fail(&s, e),
    };
    let what = if pid.is_span() { format!("span {pid}") } else { format!("profile {pid:?}") };
    heavy_query(&s, "profile", rendering, what, move |store| {
        let Some(profile) = store.span_profile(pid.clone())? else {
            return Ok(None);
        };
        let sm = &profile.summary;
        let mut labels =
            vec![(sm.profile_id.label_key(), sm.profile_id.to_string()), (wire::SPAN_NAME, sm.span_name.clone())];
        if let Some(t) = sm.trace_id {
            labels.push((wire::TRACE_ID, t.to_string()));
        }
        let meta = ExportMeta {
            title: format!("{} {} ({})", sm.service_name, sm.span_name, sm.profile_id),
            period_ns: sm.period_ns,
            time_ms: sm.first_seen_ms,
            duration_ms: sm.last_seen_ms.saturating_sub(sm.first_seen_ms),
            labels,
        };
        let mut extra = serde_json::Map::new();
        extra.insert("profile".into(), json!(summary_json(sm)));
        let file_stem = match &pid {
            ProfileId::Span(_) => format!("span-{pid}"),
            ProfileId::Named(name) => format!("profile-{}", file_name_safe(name)),
        };
        Ok(Some(Loaded { stacks: profile.stacks, meta, file_stem, extra }))
    })
    .await
}

pub(super) async fn get_trace(
    State(s): St,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(tid) = TraceId::parse(&id) else {
        return invalid_id(&s, format!("{id:?} is not a trace ID (32 hex digits)"));
    };
    let rendering = match Rendering::from_query(&q) {
        Ok(r) => r,
        Err(e) => return fail(&s, e),
    };
    heavy_query(&s, "trace", rendering, format!("trace {tid}"), move |store| {
        let profiles = query::trace(store, tid, &Selector::all())?;
        if profiles.is_empty() {
            return Ok(None);
        }
        let first = profiles.iter().map(|p| p.summary.first_seen_ms).min().unwrap_or(0);
        let last = profiles.iter().map(|p| p.summary.last_seen_ms).max().unwrap_or(0);
        let mut extra = serde_json::Map::new();
        extra.insert("trace_id".into(), json!(tid.to_string()));
        extra.insert("profiles".into(), json!(profiles.iter().map(|p| summary_json(&p.summary)).collect::<Vec<_>>()));
        let (period_ns, stacks) = query::merge_spans(profiles);
        let samples: u64 = stacks.iter().map(|(_, c)| c).sum();
        extra.insert("samples".into(), json!(samples));
        extra.insert("cpu_ns".into(), json!(samples.saturating_mul(period_ns)));
        let meta = ExportMeta {
            title: format!("trace {tid}"),
            period_ns,
            time_ms: first,
            duration_ms: last.saturating_sub(first),
            labels: vec![(wire::TRACE_ID, tid.to_string())],
        };
        Ok(Some(Loaded { stacks, meta, file_stem: format!("trace-{tid}"), extra }))
    })
    .await
}

pub(super) async fn list_services(State(s): St) -> Response {
    let store = s.store.clone();
    match blocking(move || store.services()).await {
        Ok(services) => axum::Json(json!({ "services": services })).into_response(),
        Err(e) => fail(&s, e),
    }
}

/// `?selector=`: a label selector (`{service_name="ride"}`); none selects everything.
pub(super) fn selector_param(q: &HashMap<String, String>) -> Result<Selector, Error> {
    Selector::parse(q.get("selector").map(String::as_str).unwrap_or(""))
}

pub(super) async fn label_names(State(s): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let selector = match selector_param(&q) {
        Ok(sel) => sel,
        Err(e) => return fail(&s, e),
    };
    let store = s.store.clone();
    match blocking(move || query::label_names(store.as_ref(), &selector)).await {
        Ok(names) => axum::Json(json!({ "names": names })).into_response(),
        Err(e) => fail(&s, e),
    }
}

pub(super) async fn label_values(
    State(s): St,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let selector = match selector_param(&q) {
        Ok(sel) => sel,
        Err(e) => return fail(&s, e),
    };
    let store = s.store.clone();
    let n = name.clone();
    match blocking(move || query::label_values(store.as_ref(), &n, &selector)).await {
        Ok(values) => axum::Json(json!({ "name": name, "values": values })).into_response(),
        Err(e) => fail(&s, e),
    }
}

/// `spans=`: which samples of a service a whole-process view shows (`all` when absent).
pub(super) fn spans_matcher(spans: Option<&str>) -> Result<Option<Matcher>, Error> {
    let op = match spans.unwrap_or("all") {
        "all" | "" => return Ok(None),
        "inside" => selector::Op::NotEqual,
        "outside" => selector::Op::Equal,
        other => return Err(bad_query(format!("spans {other:?}: all, inside or outside"))),
    };
    Matcher::new(selector::SPAN_NAME_LABEL, op, "").map(Some)
}

pub(super) async fn service_profile(
    State(s): St,
    Path(service): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let now = now_ms();
    let range = (|| -> Result<(ProcessQuery, Rendering), Error> {
        let from = q.get("from").map(|v| parse_time(v, now, "from")).transpose()?.unwrap_or(now - 3_600_000);
        let until = q.get("until").map(|v| parse_time(v, now, "until")).transpose()?.unwrap_or(now);
        if from > until {
            return Err(Error::rejected(Reject::BadTimestamp, "`from` is after `until`"));
        }
        let profile_type = q.get("type").filter(|t| !t.is_empty()).cloned().unwrap_or_else(|| wire::PROCESS_CPU.into());
        let mut selector = selector_param(&q)?
            .and(Matcher::new(wire::SERVICE_NAME, selector::Op::Equal, &service)?)
            .and(Matcher::new(selector::NAME_LABEL, selector::Op::Equal, &profile_type)?);
        if let Some(m) = spans_matcher(q.get("spans").map(String::as_str))? {
            selector = selector.and(m);
        }
        Ok((ProcessQuery { selector, from_ms: from, until_ms: until }, Rendering::from_query(&q)?))
    })();
    let (pq, rendering) = match range {
        Ok(r) => r,
        Err(e) => return fail(&s, e),
    };
    let (from, until) = (pq.from_ms, pq.until_ms);
    let what = format!("service {service:?} in this time range");
    heavy_query(&s, "service_profile", rendering, what, move |store| {
        let Some(profile) = query::process(store, &pq)? else {
            return Ok(None);
        };
        let samples: u64 = profile.stacks.iter().map(|(_, c)| c).sum();
        let meta = ExportMeta {
            title: format!("{service} (whole process)"),
            period_ns: profile.period_ns,
            time_ms: from,
            duration_ms: until - from,
            labels: vec![(wire::SERVICE_NAME, service.clone())],
        };
        let mut extra = serde_json::Map::new();
        extra.insert("service_name".into(), json!(service));
        extra.insert("from_ms".into(), json!(from));
        extra.insert("until_ms".into(), json!(until));
        extra.insert("samples".into(), json!(samples));
        extra.insert("cpu_ns".into(), json!(samples.saturating_mul(profile.period_ns)));
        let file_stem = file_name_safe(&service);
        Ok(Some(Loaded { stacks: profile.stacks, meta, file_stem, extra }))
    })
    .await
}

/// One side of `/api/v1/diff` from its `{side}.…` parameters: exactly one of `{side}.profile`,
/// `{side}.trace` or `{side}.service` (with `from`, `until`, `type`, `spans`, `span_name`,
/// `selector`, and `min_cpu_ms`/`max_cpu_ms` to take only the spans whose own CPU is in range).
pub(super) fn subject_param(q: &HashMap<String, String>, side: &str, now: u64) -> Result<query::Subject, Error> {
    let get = |k: &str| q.get(&format!("{side}.{k}")).map(|v| v.trim()).filter(|v| !v.is_empty());
    let named = [get("profile"), get("trace"), get("service")].iter().filter(|v| v.is_some()).count();
    if named != 1 {
        return Err(bad_query(format!("{side}: give exactly one of {side}.profile, {side}.trace or {side}.service")));
    }
    if let Some(id) = get("profile") {
        return ProfileId::parse(id)
            .map(query::Subject::Profile)
            .map_err(|why| bad_query(format!("{side}.profile {id:?}: {why}")));
    }
    if let Some(t) = get("trace") {
        return TraceId::parse(t)
            .map(query::Subject::Trace)
            .ok_or_else(|| bad_query(format!("{side}.trace {t:?} is not 32 hex digits")));
    }
    let service = get("service").unwrap_or_default();
    let from = get("from")
        .map(|v| parse_time(v, now, &format!("{side}.from")))
        .transpose()?
        .unwrap_or(now.saturating_sub(3_600_000));
    let until = get("until").map(|v| parse_time(v, now, &format!("{side}.until"))).transpose()?.unwrap_or(now);
    if from > until {
        return Err(Error::rejected(Reject::BadTimestamp, format!("{side}.from is after {side}.until")));
    }
    let mut selector = Selector::parse(get("selector").unwrap_or(""))?.and(Matcher::new(
        wire::SERVICE_NAME,
        selector::Op::Equal,
        service,
    )?);
    if let Some(name) = get("span_name") {
        selector = selector.and(Matcher::new(selector::SPAN_NAME_LABEL, selector::Op::Equal, name)?);
    }
    if let Some(q) = cpu_filter(selector.clone(), from, until, get, &format!("{side}."))? {
        return Ok(query::Subject::Spans(q));
    }
    let profile_type = get("type").unwrap_or(wire::PROCESS_CPU);
    selector = selector.and(Matcher::new(selector::NAME_LABEL, selector::Op::Equal, profile_type)?);
    if let Some(m) = spans_matcher(get("spans"))? {
        selector = selector.and(m);
    }
    Ok(query::Subject::Process(ProcessQuery { selector, from_ms: from, until_ms: until }))
}

/// The aggregate of a selection of span rollups when `get` gives `min_cpu_ms` or `max_cpu_ms`
/// (`what` names the parameters' prefix in errors).
pub(super) fn cpu_filter<'a>(
    selector: Selector,
    from_ms: u64,
    until_ms: u64,
    get: impl Fn(&str) -> Option<&'a str>,
    what: &str,
) -> Result<Option<AggregateQuery>, Error> {
    let cpu_ms = |k: &str| {
        get(k)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| bad_query(format!("{what}{k} {v:?} is not a number of milliseconds")))
            })
            .transpose()
    };
    let (min_cpu, max_cpu) = (cpu_ms("min_cpu_ms")?, cpu_ms("max_cpu_ms")?);
    if min_cpu.is_none() && max_cpu.is_none() {
        return Ok(None);
    }
    if let (Some(lo), Some(hi)) = (min_cpu, max_cpu)
        && lo > hi
    {
        return Err(bad_query(format!("{what}min_cpu_ms {lo} is above {what}max_cpu_ms {hi}")));
    }
    Ok(Some(AggregateQuery {
        selector,
        from_ms,
        until_ms,
        min_cpu_ns: min_cpu.unwrap_or(0).saturating_mul(1_000_000),
        max_cpu_ns: max_cpu.map_or(u64::MAX, |m| m.saturating_mul(1_000_000)),
    }))
}

/// `GET /api/v1/aggregate?service=S&span_name=N&from=&until=[&selector=][&min_cpu_ms=][&max_cpu_ms=]`:
/// every span profile of a span name (every named or unnamed span without `span_name`) last
/// seen in the range, as one answer — counts, the per-span CPU distribution, the heaviest spans
/// and the merged flame graph — or an export of the merged stacks (`format=`).
pub(super) async fn aggregate_spans(State(s): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let now = now_ms();
    let parsed = (|| -> Result<(AggregateQuery, Rendering), Error> {
        let get = |k: &str| q.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let service = get("service")
            .ok_or_else(|| bad_query("service is required: the service whose spans to aggregate".into()))?;
        let from =
            get("from").map(|v| parse_time(v, now, "from")).transpose()?.unwrap_or(now.saturating_sub(3_600_000));
        let until = get("until").map(|v| parse_time(v, now, "until")).transpose()?.unwrap_or(now);
        if from > until {
            return Err(Error::rejected(Reject::BadTimestamp, "`from` is after `until`"));
        }
        let mut selector = selector_param(&q)?.and(Matcher::new(wire::SERVICE_NAME, selector::Op::Equal, service)?);
        selector = selector.and(match get("span_name") {
            Some(name) => Matcher::new(selector::SPAN_NAME_LABEL, selector::Op::Equal, name)?,
            None => Matcher::new(selector::SPAN_NAME_LABEL, selector::Op::NotEqual, "")?,
        });
        let everything = AggregateQuery {
            selector: selector.clone(),
            from_ms: from,
            until_ms: until,
            min_cpu_ns: 0,
            max_cpu_ns: u64::MAX,
        };
        let aq = cpu_filter(selector, from, until, get, "")?.unwrap_or(everything);
        Ok((aq, Rendering::from_query(&q)?))
    })();
    let (aq, rendering) = match parsed {
        Ok(p) => p,
        Err(e) => return fail(&s, e),
    };
    let service = q.get("service").cloned().unwrap_or_default();
    let span_name = q.get("span_name").cloned().filter(|n| !n.trim().is_empty());
    let what = match &span_name {
        Some(n) => format!("spans {n:?} of service {service:?} in this time range"),
        None => format!("spans of service {service:?} in this time range"),
    };
    heavy_query(&s, "aggregate", rendering, what, move |store| {
        let Some(mut a) = crate::aggregate::aggregate(store, &aq)? else {
            return Ok(None);
        };
        let stacks = std::mem::take(&mut a.stacks);
        let title = match &span_name {
            Some(n) => format!("{service}: {n} ({} spans)", a.spans),
            None => format!("{service}: all spans ({})", a.spans),
        };
        let meta = ExportMeta {
            title,
            period_ns: a.period_ns,
            time_ms: aq.from_ms,
            duration_ms: aq.until_ms - aq.from_ms,
            labels: vec![(wire::SERVICE_NAME, service.clone())],
        };
        let mut extra = match serde_json::to_value(&a) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        extra.insert("service_name".into(), json!(service));
        extra.insert("span_name".into(), json!(span_name));
        extra.insert("selector".into(), json!(aq.selector.to_string()));
        extra.insert("from_ms".into(), json!(aq.from_ms));
        extra.insert("until_ms".into(), json!(aq.until_ms));
        extra.insert("min_cpu_ns".into(), json!(aq.min_cpu_ns));
        extra.insert("max_cpu_ns".into(), json!((aq.max_cpu_ns != u64::MAX).then_some(aq.max_cpu_ns)));
        let file_stem = file_name_safe(&format!("{service}-{}", span_name.as_deref().unwrap_or("spans")));
        Ok(Some(Loaded { stacks, meta, file_stem, extra }))
    })
    .await
}

/// A diff side as the JSON answer describes it.
pub(super) fn subject_json(subject: &query::Subject, loaded: &query::Loaded) -> serde_json::Value {
    let mut v = match subject {
        query::Subject::Profile(id) => json!({ "kind": "profile", "profile_id": id.to_string() }),
        query::Subject::Trace(t) => json!({ "kind": "trace", "trace_id": t.to_string() }),
        query::Subject::Process(q) => {
            json!({ "kind": "service", "selector": q.selector.to_string(), "from_ms": q.from_ms, "until_ms": q.until_ms })
        }
        query::Subject::Spans(q) => json!({
            "kind": "spans", "selector": q.selector.to_string(), "from_ms": q.from_ms, "until_ms": q.until_ms,
            "min_cpu_ns": q.min_cpu_ns, "max_cpu_ns": (q.max_cpu_ns != u64::MAX).then_some(q.max_cpu_ns),
        }),
    };
    let samples = loaded.samples();
    v["samples"] = json!(samples);
    v["period_ns"] = json!(loaded.period_ns);
    v["cpu_ns"] = json!(samples.saturating_mul(loaded.period_ns));
    if let Some(n) = loaded.span_profiles {
        v["span_profiles"] = json!(n);
    }
    v
}

/// `GET /api/v1/diff?left.…&right.…`: both sides' totals and their diff flame graph.
pub(super) async fn diff_profiles(State(s): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let started = Instant::now();
    let now = now_ms();
    let parsed =
        (|| Ok::<_, Error>((subject_param(&q, "left", now)?, subject_param(&q, "right", now)?, max_nodes(&q)?)))();
    let (left, right, bound) = match parsed {
        Ok(p) => p,
        Err(e) => return fail(&s, e),
    };
    let _turn = match s.queries.enter().await {
        Ok(t) => t,
        Err(e) => return fail(&s, e),
    };
    let store = s.store.clone();
    let answer = blocking_partial(move || -> Result<serde_json::Value, Error> {
        let (l, r) = (query::load(store.as_ref(), &left)?, query::load(store.as_ref(), &right)?);
        let graph = crate::diff::diff(&l.stacks, &r.stacks, bound);
        Ok(json!({ "left": subject_json(&left, &l), "right": subject_json(&right, &r), "flamegraph": graph }))
    })
    .await;
    let (body, partial) = match answer {
        (Ok(b), p) => (b, p),
        (Err(e), _) => return fail(&s, e),
    };
    let mut body = body;
    if let Some(why) = &partial {
        body["partial"] = json!(true);
        body["partial_reason"] = json!(why);
    }
    s.metrics.observe_query("diff", started.elapsed().as_secs_f64());
    axum::Json(body).into_response()
}
