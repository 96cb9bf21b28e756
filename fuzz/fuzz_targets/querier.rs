//! A request of Grafana's query API (`querier.v1.QuerierService`), protobuf or JSON (the first
//! byte picks the encoding and the message), through to its label selectors and profile type;
//! and the body as a label selector itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spanprof_server::proto::querier as pb;
use spanprof_server::querier::{Wire, decode, typed_selector};
use spanprof_server::selector::Selector;

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else { return };
    if let Ok(text) = std::str::from_utf8(body)
        && let Ok(selector) = Selector::parse(text)
    {
        // The text form reads back as the same selector.
        assert_eq!(Selector::parse(&selector.to_string()).ok(), Some(selector));
    }
    let wire = if first & 1 == 0 { Wire::Proto } else { Wire::Json };
    match (first >> 1) % 4 {
        0 => {
            if let Ok(r) = decode::<pb::SelectMergeStacktracesRequest>(body, wire, "fuzz") {
                let _ = typed_selector(&r.profile_type_id, &r.label_selector);
            }
        }
        1 => {
            if let Ok(r) = decode::<pb::SelectSeriesRequest>(body, wire, "fuzz") {
                let _ = typed_selector(&r.profile_type_id, &r.label_selector);
            }
        }
        2 => {
            if let Ok(r) = decode::<pb::LabelValuesRequest>(body, wire, "fuzz") {
                for m in &r.matchers {
                    let _ = Selector::parse(m);
                }
            }
        }
        _ => {
            if let Ok(r) = decode::<pb::SelectMergeSpanProfileRequest>(body, wire, "fuzz") {
                let _ = typed_selector(&r.profile_type_id, &r.label_selector);
            }
        }
    }
});
