//! Pure views of a set of stacks: the flame-graph tree and the top-functions table.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::model::{MAX_STACK_DEPTH, TRUNCATED_FRAME};

/// A flame-graph node: `total` = `self` + children's totals, in samples.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: Arc<str>,
    #[serde(rename = "self")]
    pub self_value: u64,
    pub total: u64,
    pub children: Vec<Node>,
}

/// One function in the top-functions table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopFunction {
    pub name: Arc<str>,
    #[serde(rename = "self")]
    pub self_value: u64,
    /// Samples with the function anywhere on the stack (recursion counted once).
    pub total: u64,
}

/// Builds the tree under a root named `total`; children sorted by total, largest first. Stacks
/// deeper than [`MAX_STACK_DEPTH`] (stored before ingest bounded them) are cut the same way, and
/// the tree is built and finished without recursion, so no stored profile can overflow a
/// thread's stack on the way out (serialization recurses once per level, at most
/// `MAX_STACK_DEPTH + 1`).
pub fn tree<'a, I>(stacks: I) -> Node
where
    I: IntoIterator<Item = (&'a [Arc<str>], u64)>,
{
    #[derive(Default)]
    struct Building {
        self_value: u64,
        total: u64,
        children: HashMap<Arc<str>, usize>,
    }
    // An arena: node 0 is the root; children refer to indices, so nothing nests while building.
    let mut nodes: Vec<(Arc<str>, Building)> = vec![(Arc::from("total"), Building::default())];
    let truncated: Arc<str> = Arc::from(TRUNCATED_FRAME);
    for (stack, count) in stacks {
        nodes[0].1.total += count;
        let (marker, frames) = match stack.len().checked_sub(MAX_STACK_DEPTH - 1) {
            Some(cut) if cut > 1 => (Some(&truncated), &stack[cut..]),
            _ => (None, stack),
        };
        let mut at = 0;
        for frame in marker.into_iter().chain(frames) {
            let next = match nodes[at].1.children.get(frame) {
                Some(&i) => i,
                None => {
                    nodes.push((frame.clone(), Building::default()));
                    let i = nodes.len() - 1;
                    nodes[at].1.children.insert(frame.clone(), i);
                    i
                }
            };
            at = next;
            nodes[at].1.total += count;
        }
        nodes[at].1.self_value += count;
    }
    // Children always come after their parent in the arena: finishing from the back, every
    // child is done before its parent takes it.
    let mut done: Vec<Option<Node>> = (0..nodes.len()).map(|_| None).collect();
    for i in (0..nodes.len()).rev() {
        let (name, b) = std::mem::take(&mut nodes[i]);
        let mut children: Vec<Node> = b.children.values().filter_map(|&c| done[c].take()).collect();
        children.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.name.cmp(&b.name)));
        done[i] = Some(Node { name, self_value: b.self_value, total: b.total, children });
    }
    done.swap_remove(0).unwrap_or_default()
}

/// Self and total samples per function, sorted by self, then total, descending.
pub fn top_functions<'a, I>(stacks: I, limit: usize) -> Vec<TopFunction>
where
    I: IntoIterator<Item = (&'a [Arc<str>], u64)>,
{
    let mut by_name: HashMap<Arc<str>, (u64, u64)> = HashMap::new();
    // A set, not a list: deep recursive stacks would make the check quadratic.
    let mut seen: std::collections::HashSet<&Arc<str>> = std::collections::HashSet::new();
    for (stack, count) in stacks {
        if let Some(leaf) = stack.last() {
            by_name.entry(leaf.clone()).or_default().0 += count;
        }
        seen.clear();
        for f in stack {
            if seen.insert(f) {
                by_name.entry(f.clone()).or_default().1 += count;
            }
        }
    }
    let mut out: Vec<TopFunction> =
        by_name.into_iter().map(|(name, (s, t))| TopFunction { name, self_value: s, total: t }).collect();
    out.sort_by(|a, b| {
        b.self_value.cmp(&a.self_value).then(b.total.cmp(&a.total)).then_with(|| a.name.cmp(&b.name))
    });
    out.truncate(limit);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(frames: &[&str]) -> Vec<Arc<str>> {
        frames.iter().map(|f| Arc::from(*f)).collect()
    }

    #[test]
    fn tree_totals_and_self() {
        let stacks = [(s(&["main", "a", "b"]), 3), (s(&["main", "a"]), 2), (s(&["main", "c"]), 5)];
        let t = tree(stacks.iter().map(|(f, c)| (f.as_slice(), *c)));
        assert_eq!(t.total, 10);
        let main = &t.children[0];
        assert_eq!((main.total, main.self_value), (10, 0));
        assert_eq!(main.children.len(), 2);
        let a = main.children.iter().find(|n| &*n.name == "a").unwrap();
        assert_eq!((a.total, a.self_value), (5, 2));
    }

    #[test]
    fn top_counts_recursion_once() {
        let stacks = [(s(&["main", "f", "f", "g"]), 4), (s(&["main", "f"]), 1)];
        let top = top_functions(stacks.iter().map(|(f, c)| (f.as_slice(), *c)), 10);
        assert_eq!(&*top[0].name, "g");
        let f = top.iter().find(|t| &*t.name == "f").unwrap();
        assert_eq!((f.self_value, f.total), (1, 5));
    }

    #[test]
    fn a_stack_deeper_than_the_bound_is_cut_under_a_marker_and_serializes_on_a_small_stack() {
        let deep: Vec<Arc<str>> = (0..50_000).map(|i| Arc::from(format!("f{i}"))).collect();
        let shallow = s(&["main", "work"]);
        // Tokio's worker threads have 2 MiB; the old recursive build overflowed at ~4,000 frames.
        let json = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let t = tree([(&deep[..], 3), (&shallow[..], 1)]);
                assert_eq!(t.total, 4);
                let marker = t.children.iter().find(|c| &*c.name == TRUNCATED_FRAME).expect("cut under the marker");
                let mut depth = 1;
                let mut node = marker;
                while let Some(child) = node.children.first() {
                    node = child;
                    depth += 1;
                }
                assert_eq!(depth, MAX_STACK_DEPTH, "the marker and the leaf-most frames");
                assert_eq!(&*node.name, "f49999", "the leaf is kept");
                assert_eq!(node.self_value, 3);
                serde_json::to_string(&t).unwrap()
            })
            .unwrap()
            .join()
            .expect("no stack overflow");
        assert!(json.contains("f49999") && !json.contains("\"f0\""));
    }

}
