//! A block's bytes as they come from the bucket (truncated, corrupted, hostile): the footer and
//! every page it names decode to data or a clear error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spanprof_server::store::block;

fuzz_target!(|data: &[u8]| {
    let Ok(Ok(footer)) = block::decode_footer(data) else { return };
    for table in &footer.tables {
        for page in &table.pages {
            let start = usize::try_from(page.offset).unwrap_or(usize::MAX);
            if let Some(bytes) = start.checked_add(page.len as usize).and_then(|end| data.get(start..end)) {
                let _ = block::decode_page(bytes);
            }
            let _ = table.page_for(&page.first_key);
            let _ = table.pages_for_prefix(&page.first_key);
        }
        let _ = table.bloom().may_contain(data);
    }
});
