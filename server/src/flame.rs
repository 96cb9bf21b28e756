//! Pure views of a set of stacks: the call tree, bounded to `max_nodes` and encoded as
//! Pyroscope's flame-graph "levels" (the flamebearer), and the top-functions table from the same
//! tree.
//!
//! One tree build serves all three: stacks are folded into an arena (children found through one
//! hash map keyed by parent and name, so building is O(frames)), siblings are ordered once, and
//! truncation and encoding are walks over that arena. Nothing here recurses, so no stored profile
//! can overflow a thread's stack.

use std::cmp::Reverse;
use std::sync::Arc;

use ahash::AHashMap as HashMap;
use serde::Serialize;

use crate::model::{MAX_STACK_DEPTH, TRUNCATED_FRAME};

/// Nodes the JSON API returns unless `?max_nodes=` says otherwise (Pyroscope's default too).
pub const DEFAULT_MAX_NODES: usize = 8192;
/// The node that stands for a parent's children left out by truncation (Pyroscope's name).
pub const OTHER_FRAME: &str = "other";
/// The root's name.
pub const ROOT_FRAME: &str = "total";

/// One function in the top-functions table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopFunction {
    pub name: Arc<str>,
    #[serde(rename = "self")]
    pub self_value: u64,
    /// Samples with the function anywhere on the stack (recursion counted once).
    pub total: u64,
}

/// A flame graph in Pyroscope's flamebearer encoding, at most `max_nodes` bars.
///
/// `levels[d]` holds the bars at depth `d` (0 = the root, named `total`) left to right, four
/// numbers each: `[x offset, total, self, name index]`. The offset is delta-encoded: the first
/// bar's is its start, each next one's is its start minus the previous bar's end. A bar's
/// children start at its `x + self`. Widths are samples.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlameGraph {
    pub names: Vec<Arc<str>>,
    pub levels: Vec<Vec<u64>>,
    /// Samples of the whole profile (the root's total).
    pub total: u64,
    /// The largest self value of any bar.
    pub max_self: u64,
    /// Bars in `levels`, `other` bars included.
    pub nodes: usize,
    /// Nodes of the whole call tree, root included.
    pub total_nodes: usize,
    /// Nodes of the call tree left out (merged into `other` bars); 0 when nothing was.
    pub dropped_nodes: usize,
    /// The bound this graph was cut to; 0 = unbounded.
    pub max_nodes: usize,
}

/// A call tree: node 0 is the root; the others are stack frames, merged by path.
#[derive(Clone, Debug, Default)]
pub struct CallTree {
    /// Distinct frame names; index 0 is [`ROOT_FRAME`].
    names: Vec<Arc<str>>,
    name: Vec<u32>,
    parent: Vec<u32>,
    self_value: Vec<u64>,
    total: Vec<u64>,
    /// Children of node `i` are `children[child_start[i]..child_start[i + 1]]`, largest total
    /// first, then by name (deterministic). The arena itself is depth-first in name order, the
    /// same for any order of the input stacks, so ties broken by index are deterministic too.
    child_start: Vec<u32>,
    children: Vec<u32>,
    /// Per name: samples with it as the leaf, and on the stack (once per stack).
    top_self: Vec<u64>,
    top_total: Vec<u64>,
}

impl CallTree {
    /// Folds stacks (root first) with sample counts into a tree. Stacks deeper than
    /// [`MAX_STACK_DEPTH`] (stored before ingest bounded them) keep their leaf-most frames under
    /// a [`TRUNCATED_FRAME`], as ingest does.
    ///
    /// The stacks are sorted by their frames first: stacks that share a prefix are then
    /// neighbours, so each new stack only adds the nodes past its common prefix with the one
    /// before, and no node needs a lookup by (parent, name). The arena comes out depth-first in
    /// name order, parents before children, the same for any order of the input.
    pub fn build<'a, I>(stacks: I) -> CallTree
    where
        I: IntoIterator<Item = (&'a [Arc<str>], u64)>,
    {
        let marker: Arc<str> = Arc::from(TRUNCATED_FRAME);
        let mut input: Vec<(bool, &'a [Arc<str>], u64)> = stacks
            .into_iter()
            .filter(|(stack, count)| *count > 0 && !stack.is_empty())
            .map(|(stack, count)| match stack.len().checked_sub(MAX_STACK_DEPTH - 1) {
                Some(cut) if cut > 1 => (true, &stack[cut..], count),
                _ => (false, stack, count),
            })
            .collect();
        let frames = |&(cut, stack, _): &(bool, &'a [Arc<str>], u64)| {
            let marker = cut.then_some(TRUNCATED_FRAME);
            marker.into_iter().chain(stack.iter().map(|f| &**f))
        };
        // By name, frame by frame; the store shares one `Arc` per frame name, so most equal
        // frames are told equal by address without comparing their bytes.
        input.sort_unstable_by(|a, b| {
            if a.0 == b.0 {
                for (x, y) in a.1.iter().zip(b.1) {
                    if !Arc::ptr_eq(x, y) {
                        match x.cmp(y) {
                            std::cmp::Ordering::Equal => {}
                            unequal => return unequal,
                        }
                    }
                }
                a.1.len().cmp(&b.1.len())
            } else {
                frames(a).cmp(frames(b))
            }
        });

        let mut t = CallTree {
            names: vec![Arc::from(ROOT_FRAME)],
            name: vec![0],
            parent: vec![0],
            self_value: vec![0],
            total: vec![0],
            ..Default::default()
        };
        // Names by string, and by the address of the shared `Arc` the store hands out for each
        // frame (a hit skips hashing the string). Every `Arc` here is borrowed for the whole
        // build, so no address is reused by another name meanwhile.
        let mut by_name: HashMap<Arc<str>, u32> = HashMap::new();
        by_name.insert(t.names[0].clone(), 0);
        let mut by_address: HashMap<usize, u32> = HashMap::new();
        let mut intern = |f: &Arc<str>, names: &mut Vec<Arc<str>>| -> u32 {
            let address = Arc::as_ptr(f) as *const u8 as usize;
            if let Some(&id) = by_address.get(&address) {
                return id;
            }
            let id = match by_name.get(&**f) {
                Some(&id) => id,
                None => {
                    names.push(f.clone());
                    let id = (names.len() - 1) as u32;
                    by_name.insert(f.clone(), id);
                    id
                }
            };
            by_address.insert(address, id);
            id
        };
        // The nodes of the previous stack's path, and that stack.
        // The top functions come from the same pass: a function's self is the count of the
        // stacks it is the leaf of; its total, the count of the stacks it is on, once per stack
        // however deep it recurses (only its outermost node on the path adds).
        let mut path: Vec<(u32, bool)> = Vec::new();
        let mut on_path: Vec<u32> = Vec::new();
        let mut previous: Option<&(bool, &'a [Arc<str>], u64)> = None;
        for item in &input {
            let &(cut, stack, count) = item;
            let common = previous.map_or(0, |p| frames(p).zip(frames(item)).take_while(|(a, b)| a == b).count());
            for &(node, _) in &path[common.min(path.len())..] {
                on_path[t.name[node as usize] as usize] -= 1;
            }
            path.truncate(common);
            let depth = usize::from(cut) + stack.len();
            for d in common..depth {
                let frame = if cut && d == 0 { &marker } else { &stack[d - usize::from(cut)] };
                let name = intern(frame, &mut t.names);
                if on_path.len() < t.names.len() {
                    on_path.resize(t.names.len(), 0);
                    t.top_self.resize(t.names.len(), 0);
                    t.top_total.resize(t.names.len(), 0);
                }
                let parent = path.last().map_or(0, |&(node, _)| node);
                t.name.push(name);
                t.parent.push(parent);
                t.self_value.push(0);
                t.total.push(0);
                let outermost = on_path[name as usize] == 0;
                on_path[name as usize] += 1;
                path.push(((t.name.len() - 1) as u32, outermost));
            }
            t.total[0] = t.total[0].saturating_add(count);
            for &(node, outermost) in &path {
                let node = node as usize;
                t.total[node] = t.total[node].saturating_add(count);
                if outermost {
                    let name = t.name[node] as usize;
                    t.top_total[name] = t.top_total[name].saturating_add(count);
                }
            }
            if let Some(&(leaf, _)) = path.last() {
                let leaf = leaf as usize;
                t.self_value[leaf] = t.self_value[leaf].saturating_add(count);
                let name = t.name[leaf] as usize;
                t.top_self[name] = t.top_self[name].saturating_add(count);
            }
            previous = Some(item);
        }
        t.order_children();
        t
    }

    /// Fills the child lists, largest total first, then by name.
    fn order_children(&mut self) {
        let n = self.name.len();
        let mut start = vec![0u32; n + 1];
        for &p in &self.parent[1..] {
            start[p as usize + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut children = vec![0u32; n.saturating_sub(1)];
        for c in 1..n {
            let p = self.parent[c] as usize;
            children[fill[p] as usize] = c as u32;
            fill[p] += 1;
        }
        // Siblings arrive in name order (the arena is built from sorted stacks); a stable sort
        // by total keeps that order among equal totals.
        for p in 0..n {
            let range = &mut children[start[p] as usize..start[p + 1] as usize];
            if range.len() > 1 {
                range.sort_by(|&a, &b| self.total[b as usize].cmp(&self.total[a as usize]));
            }
        }
        self.child_start = start;
        self.children = children;
    }

    fn children_of(&self, node: u32) -> &[u32] {
        let i = node as usize;
        match (self.child_start.get(i), self.child_start.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.children[a as usize..b as usize],
            _ => &[],
        }
    }

    /// Nodes, root included.
    pub fn len(&self) -> usize {
        self.name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// Samples of the whole tree.
    pub fn total(&self) -> u64 {
        self.total.first().copied().unwrap_or(0)
    }

    /// The flame graph bounded to `max_nodes` bars (0 = every node): the children each kept node
    /// loses are merged into one `other` bar after its kept children, so every total stays exact.
    pub fn flamegraph(&self, max_nodes: usize) -> FlameGraph {
        let kept = kept(self, |i| self.total[i as usize], max_nodes);
        let Encoded { names, levels, max_self, bars, kept_nodes } = encode(self, &kept);
        FlameGraph {
            names,
            levels,
            total: self.total(),
            max_self,
            nodes: bars,
            total_nodes: self.len(),
            dropped_nodes: self.len() - kept_nodes,
            max_nodes,
        }
    }

    /// Self and total samples per function, sorted by self, then total, descending; a function
    /// recursing on one stack counts once in its total. The root is not a function.
    pub fn top_functions(&self, limit: usize) -> Vec<TopFunction> {
        let (self_by, total_by) = (&self.top_self, &self.top_total);
        let mut out: Vec<TopFunction> = (0..total_by.len())
            .filter(|&n| total_by[n] > 0)
            .map(|n| TopFunction { name: self.names[n].clone(), self_value: self_by[n], total: total_by[n] })
            .collect();
        out.sort_by(|a, b| {
            b.self_value.cmp(&a.self_value).then(b.total.cmp(&a.total)).then_with(|| a.name.cmp(&b.name))
        });
        out.truncate(limit);
        out
    }
}

impl Bars<1> for CallTree {
    fn len(&self) -> usize {
        self.name.len()
    }
    fn parent(&self, node: u32) -> u32 {
        self.parent[node as usize]
    }
    fn children(&self, node: u32) -> &[u32] {
        self.children_of(node)
    }
    fn values(&self, node: u32) -> ([u64; 1], [u64; 1]) {
        let i = node as usize;
        ([self.total[i]], [self.self_value[i]])
    }
    fn name(&self, node: u32) -> (u32, &Arc<str>) {
        let id = self.name[node as usize];
        (id, &self.names[id as usize])
    }
    fn name_count(&self) -> usize {
        self.names.len()
    }
}

/// A call tree as truncation and the flamebearer encoding see it: node 0 is the root, and every
/// node has `N` values, one per profile drawn (a flame graph has one, a diff two). The flame
/// graph ([`CallTree`]) and the diff ([`crate::diff`]) are cut and encoded by the same code.
pub(crate) trait Bars<const N: usize> {
    /// Nodes, root included.
    fn len(&self) -> usize;
    fn parent(&self, node: u32) -> u32;
    /// Children in drawing order (left to right).
    fn children(&self, node: u32) -> &[u32];
    /// `(total, self)` of each side.
    fn values(&self, node: u32) -> ([u64; N], [u64; N]);
    /// The node's name and its index among the tree's names.
    fn name(&self, node: u32) -> (u32, &Arc<str>);
    /// Distinct names of the tree.
    fn name_count(&self) -> usize;
}

/// Which nodes a graph of at most `max_nodes` bars keeps (0 = all). The heaviest nodes are kept
/// (ties to the earlier one in the arena, so a parent before its child), greedily, while the
/// kept nodes plus one `other` bar for each kept parent with children left out still fit. A
/// node never weighs less than its child, so the kept nodes always form a tree under the root.
pub(crate) fn kept<const N: usize>(tree: &impl Bars<N>, weight: impl Fn(u32) -> u64, max_nodes: usize) -> Vec<bool> {
    let n = tree.len();
    if max_nodes == 0 || n <= max_nodes {
        return vec![true; n];
    }
    let key = |&i: &u32| (Reverse(weight(i)), i);
    let mut order: Vec<u32> = (1..n as u32).collect();
    if max_nodes < order.len() {
        order.select_nth_unstable_by_key(max_nodes, key);
        order.truncate(max_nodes);
    }
    order.sort_unstable_by_key(key);
    let child_count = |i: u32| tree.children(i).len();
    let mut kept = vec![false; n];
    let mut left_out = vec![0usize; n];
    kept[0] = true;
    left_out[0] = child_count(0);
    let mut others = usize::from(left_out[0] > 0);
    // The root and the `added` nodes before `c` are kept.
    for (added, c) in order.into_iter().enumerate() {
        let kept_count = 1 + added;
        let p = tree.parent(c) as usize;
        if !kept[p] {
            continue;
        }
        let mut others_after = others;
        if left_out[p] == 1 {
            others_after -= 1;
        }
        let grandchildren = child_count(c);
        if grandchildren > 0 {
            others_after += 1;
        }
        if kept_count + 1 + others_after > max_nodes {
            break;
        }
        kept[c as usize] = true;
        left_out[p] -= 1;
        left_out[c as usize] = grandchildren;
        others = others_after;
    }
    kept
}

/// A tree drawn as flamebearer levels.
pub(crate) struct Encoded {
    pub names: Vec<Arc<str>>,
    /// Per depth, per bar: `[x offset, total, self]` of each side, then the name index; offsets
    /// delta-encoded per side (a bar's offset is its start minus the previous bar's end).
    pub levels: Vec<Vec<u64>>,
    /// The largest self value of any bar, any side.
    pub max_self: u64,
    /// Bars drawn, `other` bars included.
    pub bars: usize,
    /// Nodes of the tree drawn (the rest went into `other` bars).
    pub kept_nodes: usize,
}

/// Draws the `kept` nodes of `tree`: a bar's children start at its `x + self` on each side, and
/// the children a kept node loses are merged into one `other` bar after its kept children, so
/// every total stays exact. Iterative: no stored profile can overflow a thread's stack.
pub(crate) fn encode<const N: usize>(tree: &impl Bars<N>, kept: &[bool]) -> Encoded {
    let mut names: Vec<Arc<str>> = Vec::new();
    let mut out_name = vec![u32::MAX; tree.name_count()];
    let mut other_name = u32::MAX;
    let mut levels: Vec<Vec<u64>> = Vec::new();
    let mut level_end: Vec<[u64; N]> = Vec::new();
    let (mut bars, mut max_self, mut kept_nodes) = (0usize, 0u64, 0usize);

    enum Bar<const N: usize> {
        Node(u32),
        Other([u64; N]),
    }
    // (bar, depth, x of each side), popped left to right.
    let mut stack: Vec<(Bar<N>, usize, [u64; N])> = vec![(Bar::Node(0), 0, [0; N])];
    let mut batch: Vec<(Bar<N>, usize, [u64; N])> = Vec::new();
    while let Some((bar, depth, x)) = stack.pop() {
        let (total, self_value, name) = match bar {
            Bar::Node(i) => {
                kept_nodes += 1;
                let (id, name) = tree.name(i);
                let out = &mut out_name[id as usize];
                if *out == u32::MAX {
                    names.push(name.clone());
                    *out = (names.len() - 1) as u32;
                }
                let (total, self_value) = tree.values(i);
                (total, self_value, *out)
            }
            Bar::Other(value) => {
                if other_name == u32::MAX {
                    names.push(Arc::from(OTHER_FRAME));
                    other_name = (names.len() - 1) as u32;
                }
                (value, value, other_name)
            }
        };
        if levels.len() <= depth {
            levels.push(Vec::new());
            level_end.push([0; N]);
        }
        let end = &mut level_end[depth];
        let level = &mut levels[depth];
        for side in 0..N {
            level.extend([x[side] - end[side], total[side], self_value[side]]);
            end[side] = x[side] + total[side];
            max_self = max_self.max(self_value[side]);
        }
        level.push(u64::from(name));
        bars += 1;
        if let Bar::Node(i) = bar {
            let mut cx: [u64; N] = std::array::from_fn(|side| x[side] + self_value[side]);
            let mut other = [0u64; N];
            batch.clear();
            for &c in tree.children(i) {
                let (ct, _) = tree.values(c);
                if kept[c as usize] {
                    batch.push((Bar::Node(c), depth + 1, cx));
                    (0..N).for_each(|side| cx[side] += ct[side]);
                } else {
                    (0..N).for_each(|side| other[side] += ct[side]);
                }
            }
            if other != [0; N] {
                batch.push((Bar::Other(other), depth + 1, cx));
            }
            stack.extend(batch.drain(..).rev());
        }
    }
    Encoded { names, levels, max_self, bars, kept_nodes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(frames: &[&str]) -> Vec<Arc<str>> {
        frames.iter().map(|f| Arc::from(*f)).collect()
    }

    fn tree_of(stacks: &[(Vec<Arc<str>>, u64)]) -> CallTree {
        CallTree::build(stacks.iter().map(|(f, c)| (f.as_slice(), *c)))
    }

    /// Decodes levels back into `(depth, x, total, self, name)` bars.
    fn bars(g: &FlameGraph) -> Vec<(usize, u64, u64, u64, String)> {
        let mut out = Vec::new();
        for (d, level) in g.levels.iter().enumerate() {
            let mut end = 0;
            for q in level.chunks(4) {
                let x = end + q[0];
                out.push((d, x, q[1], q[2], g.names[q[3] as usize].to_string()));
                end = x + q[1];
            }
        }
        out
    }

    /// Checks the tree invariants every graph must keep: each bar inside a parent one level up,
    /// children from the parent's `x + self`, a parent's total = self + its children's totals.
    fn assert_consistent(g: &FlameGraph) {
        let b = bars(g);
        let mut by_depth: Vec<Vec<usize>> = Vec::new();
        for (i, bar) in b.iter().enumerate() {
            if by_depth.len() <= bar.0 {
                by_depth.push(Vec::new());
            }
            by_depth[bar.0].push(i);
        }
        assert_eq!(by_depth[0].len(), 1);
        assert_eq!((b[0].1, b[0].2), (0, g.total));
        let mut children_total = vec![0u64; b.len()];
        let mut first_child = vec![u64::MAX; b.len()];
        for d in 1..by_depth.len() {
            let parents = &by_depth[d - 1];
            for &c in &by_depth[d] {
                let (x, total) = (b[c].1, b[c].2);
                // Bars of a level are left to right: the parent is the last one starting at or before x.
                let at = parents.partition_point(|&p| b[p].1 <= x);
                assert!(at > 0, "{} has no parent", b[c].4);
                let p = parents[at - 1];
                assert!(x + total <= b[p].1 + b[p].2, "{} sticks out of {}", b[c].4, b[p].4);
                children_total[p] += total;
                first_child[p] = first_child[p].min(x);
            }
        }
        for (i, bar) in b.iter().enumerate() {
            assert_eq!(bar.3 + children_total[i], bar.2, "{}: total = self + children", bar.4);
            if first_child[i] != u64::MAX {
                assert_eq!(first_child[i], bar.1 + bar.3, "{}: children start after self", bar.4);
            }
        }
    }

    #[test]
    fn levels_encode_as_pyroscope_does() {
        // The example of the Grafana notes: main;a;b=30, main;a=10, main;c=20.
        let g =
            tree_of(&[(s(&["main", "a", "b"]), 30), (s(&["main", "a"]), 10), (s(&["main", "c"]), 20)]).flamegraph(0);
        let names: Vec<&str> = g.names.iter().map(|n| &**n).collect();
        assert_eq!(names, ["total", "main", "a", "b", "c"]);
        assert_eq!(
            g.levels,
            vec![vec![0, 60, 0, 0], vec![0, 60, 0, 1], vec![0, 40, 10, 2, 0, 20, 20, 4], vec![10, 30, 30, 3]]
        );
        assert_eq!((g.total, g.max_self, g.nodes, g.total_nodes, g.dropped_nodes), (60, 30, 5, 5, 0));
    }

    #[test]
    fn equal_stacks_merge_and_a_stored_marker_meets_a_cut_stack() {
        let deep: Vec<Arc<str>> = (0..MAX_STACK_DEPTH + 5).map(|i| Arc::from(format!("f{i}"))).collect();
        let mut stored = s(&[TRUNCATED_FRAME]);
        stored.extend_from_slice(&deep[6..]);
        assert_eq!(stored.len(), MAX_STACK_DEPTH);
        let stacks = [(s(&["a", "b"]), 2), (deep.clone(), 1), (s(&["a", "b"]), 3), (stored, 4)];
        let t = tree_of(&stacks);
        let g = t.flamegraph(0);
        let b = bars(&g);
        let depth1: Vec<(&str, u64)> = b.iter().filter(|x| x.0 == 1).map(|x| (x.4.as_str(), x.2)).collect();
        assert_eq!(depth1, [(TRUNCATED_FRAME, 5), ("a", 5)]);
        assert_eq!(b.iter().filter(|x| x.4 == "b").map(|x| x.3).collect::<Vec<_>>(), [5]);
        let leaf = format!("f{}", MAX_STACK_DEPTH + 4);
        assert_eq!(b.iter().filter(|x| x.4 == leaf).map(|x| x.3).collect::<Vec<_>>(), [5], "one path under one marker");
        assert_eq!(t.len(), 1 + MAX_STACK_DEPTH + 2);
    }

    #[test]
    fn top_counts_recursion_once() {
        let t = tree_of(&[(s(&["main", "f", "f", "g"]), 4), (s(&["main", "f"]), 1)]);
        let top = t.top_functions(10);
        assert_eq!(&*top[0].name, "g");
        let f = top.iter().find(|t| &*t.name == "f").unwrap();
        assert_eq!((f.self_value, f.total), (1, 5));
        let main = top.iter().find(|t| &*t.name == "main").unwrap();
        assert_eq!((main.self_value, main.total), (0, 5));
        assert!(top.iter().all(|t| &*t.name != ROOT_FRAME));
    }

    /// A wide, deep tree: 3,000 stacks over 300 functions.
    fn big() -> Vec<(Vec<Arc<str>>, u64)> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..3000)
            .map(|_| {
                let depth = 3 + (next() % 20) as usize;
                let frames: Vec<Arc<str>> =
                    (0..depth).map(|d| Arc::from(format!("fn{}", (next() % 300) / (d as u64 % 3 + 1)))).collect();
                (frames, 1 + next() % 50)
            })
            .collect()
    }

    #[test]
    fn truncation_keeps_every_total_exact_stays_within_the_bound_and_is_deterministic() {
        let stacks = big();
        let full = tree_of(&stacks).flamegraph(0);
        assert!(full.total_nodes > 10_000, "{}", full.total_nodes);
        assert_eq!(full.nodes, full.total_nodes);
        assert_consistent(&full);
        for max in [2, 3, 10, 100, 1000, 8192] {
            let g = tree_of(&stacks).flamegraph(max);
            assert!(g.nodes <= max, "{} bars for max_nodes {max}", g.nodes);
            assert_eq!(g.total, full.total);
            assert!(g.dropped_nodes > 0);
            assert!(g.nodes > max / 2, "the bound is used: {} of {max}", g.nodes);
            assert_consistent(&g);
            // Same input in another order: the same graph.
            let mut reversed = stacks.clone();
            reversed.reverse();
            assert_eq!(tree_of(&reversed).flamegraph(max), g, "max_nodes {max}");
        }
        // The largest nodes are the ones kept: main paths survive, `other` bars hold the rest.
        let g = tree_of(&stacks).flamegraph(100);
        assert!(g.names.iter().any(|n| &**n == OTHER_FRAME));
        let biggest_child = full.levels[1][1];
        assert_eq!(g.levels[1][1], biggest_child);
    }

    #[test]
    fn top_functions_match_a_count_over_the_stacks() {
        let stacks = big();
        let mut want: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
        for (frames, count) in &stacks {
            want.entry(&*frames[frames.len() - 1]).or_default().0 += count;
            let distinct: std::collections::BTreeSet<&str> = frames.iter().map(|f| &**f).collect();
            for f in distinct {
                want.entry(f).or_default().1 += count;
            }
        }
        let got = tree_of(&stacks).top_functions(usize::MAX);
        assert_eq!(got.len(), want.len());
        for t in &got {
            assert_eq!(want[&*t.name], (t.self_value, t.total), "{}", t.name);
        }
        assert!(got.windows(2).all(|w| w[0].self_value >= w[1].self_value));
    }

    #[test]
    fn an_unbounded_or_small_tree_is_left_whole() {
        let stacks = [(s(&["main", "a"]), 3), (s(&["main", "b"]), 1)];
        let g = tree_of(&stacks).flamegraph(DEFAULT_MAX_NODES);
        assert_eq!((g.nodes, g.dropped_nodes), (4, 0));
        assert!(!g.names.iter().any(|n| &**n == OTHER_FRAME));
        let g = tree_of(&stacks).flamegraph(3);
        // Root, main and one `other` for a and b (a alone would need an `other` for b: 4 bars).
        assert_eq!(bars(&g).iter().map(|b| b.4.as_str()).collect::<Vec<_>>(), ["total", "main", "other"]);
        assert_eq!(g.dropped_nodes, 2);
        let empty = CallTree::build(std::iter::empty()).flamegraph(DEFAULT_MAX_NODES);
        assert_eq!((empty.total, empty.nodes), (0, 1));
    }

    #[test]
    fn a_stack_deeper_than_the_bound_is_cut_under_a_marker_without_recursion() {
        let deep: Vec<Arc<str>> = (0..50_000).map(|i| Arc::from(format!("f{i}"))).collect();
        let shallow = s(&["main", "work"]);
        // Tokio's worker threads have 2 MiB; a recursive walk overflowed at ~4,000 frames.
        let g = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let t = CallTree::build([(&deep[..], 3), (&shallow[..], 1)]);
                let top = t.top_functions(5);
                assert_eq!(&*top[0].name, "f49999");
                let g = t.flamegraph(0);
                serde_json::to_string(&g).unwrap();
                g
            })
            .unwrap()
            .join()
            .expect("no stack overflow");
        assert_eq!(g.total, 4);
        assert_eq!(g.levels.len(), MAX_STACK_DEPTH + 1, "root, the marker and the leaf-most frames");
        let b = bars(&g);
        assert!(b.iter().any(|x| x.0 == 1 && x.4 == TRUNCATED_FRAME));
        let leaf = b.iter().find(|x| x.0 == MAX_STACK_DEPTH).unwrap();
        assert_eq!((leaf.4.as_str(), leaf.3), ("f49999", 3));
        assert!(!g.names.iter().any(|n| &**n == "f0"));
    }
}
