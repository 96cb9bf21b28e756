//! Pure views of a set of stacks: the flame-graph tree and the top-functions table.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

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

/// Builds the tree under a root named `total`; children sorted by total, largest first.
pub fn tree<'a, I>(stacks: I) -> Node
where
    I: IntoIterator<Item = (&'a [Arc<str>], u64)>,
{
    #[derive(Default)]
    struct Building {
        self_value: u64,
        total: u64,
        children: HashMap<Arc<str>, Building>,
    }
    let mut root = Building::default();
    for (stack, count) in stacks {
        root.total += count;
        let mut node = &mut root;
        for frame in stack {
            node = node.children.entry(frame.clone()).or_default();
            node.total += count;
        }
        node.self_value += count;
    }
    fn finish(name: Arc<str>, b: Building) -> Node {
        let mut children: Vec<Node> = b.children.into_iter().map(|(n, c)| finish(n, c)).collect();
        children.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.name.cmp(&b.name)));
        Node { name, self_value: b.self_value, total: b.total, children }
    }
    finish(Arc::from("total"), root)
}

/// Self and total samples per function, sorted by self, then total, descending.
pub fn top_functions<'a, I>(stacks: I, limit: usize) -> Vec<TopFunction>
where
    I: IntoIterator<Item = (&'a [Arc<str>], u64)>,
{
    let mut by_name: HashMap<Arc<str>, (u64, u64)> = HashMap::new();
    let mut seen: Vec<&Arc<str>> = Vec::new();
    for (stack, count) in stacks {
        if let Some(leaf) = stack.last() {
            by_name.entry(leaf.clone()).or_default().0 += count;
        }
        seen.clear();
        for f in stack {
            if !seen.contains(&f) {
                seen.push(f);
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
}
