//! The diff of two profiles as one flame graph: the call tree of both, each node with its left
//! and right values, encoded as Pyroscope's diff flamebearer — per bar `[left x offset, left
//! total, left self, right x offset, right total, right self, name index]`, offsets delta-encoded
//! per side — bounded to `max_nodes` bars by the nodes' combined share of their sides.
//!
//! Pure: the HTTP layer loads the two sides, this compares them; the tree is cut and encoded by
//! [`crate::flame`]'s code for any number of sides. Nothing here recurses.

use std::sync::Arc;

use ahash::AHashMap as HashMap;
use serde::Serialize;

use crate::flame::{self, Bars, Encoded, ROOT_FRAME};
use crate::store::Stacks;

/// A diff flame graph (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiffGraph {
    pub names: Vec<Arc<str>>,
    pub levels: Vec<Vec<u64>>,
    /// Samples of each side (the root's totals).
    pub left_ticks: u64,
    pub right_ticks: u64,
    /// The largest self value of any bar, either side.
    pub max_self: u64,
    /// Bars in `levels`, `other` bars included.
    pub nodes: usize,
    /// Nodes of the tree left out (merged into `other` bars).
    pub dropped_nodes: usize,
}

/// One node's values, for tests and the top-changes table.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffNode {
    pub stack: Vec<Arc<str>>,
    pub left: u64,
    pub right: u64,
}

/// The call tree of two profiles.
struct DiffTree {
    names: Vec<Arc<str>>,
    name: Vec<u32>,
    parent: Vec<u32>,
    /// `[left, right]` totals and self values.
    total: Vec<[u64; 2]>,
    self_value: Vec<[u64; 2]>,
    children: Vec<Vec<u32>>,
}

impl DiffTree {
    fn build(left: &Stacks, right: &Stacks) -> DiffTree {
        let mut t = DiffTree {
            names: vec![Arc::from(ROOT_FRAME)],
            name: vec![0],
            parent: vec![0],
            total: vec![[0, 0]],
            self_value: vec![[0, 0]],
            children: vec![Vec::new()],
        };
        let mut name_ids: HashMap<Arc<str>, u32> = HashMap::new();
        let mut child_of: HashMap<(u32, u32), u32> = HashMap::new();
        for (side, stacks) in [left, right].into_iter().enumerate() {
            for (frames, count) in stacks.iter().filter(|(f, c)| *c > 0 && !f.is_empty()) {
                let mut node = 0u32;
                t.total[0][side] += count;
                for f in frames {
                    let n = *name_ids.entry(f.clone()).or_insert_with(|| {
                        t.names.push(f.clone());
                        (t.names.len() - 1) as u32
                    });
                    node = match child_of.get(&(node, n)) {
                        Some(&c) => c,
                        None => {
                            let c = t.name.len() as u32;
                            t.name.push(n);
                            t.parent.push(node);
                            t.total.push([0, 0]);
                            t.self_value.push([0, 0]);
                            t.children.push(Vec::new());
                            t.children[node as usize].push(c);
                            child_of.insert((node, n), c);
                            c
                        }
                    };
                    t.total[node as usize][side] += count;
                }
                t.self_value[node as usize][side] += count;
            }
        }
        t
    }

    /// A node's weight: its share of the left side plus its share of the right one, in parts
    /// per 2^40 (exact ordering for any realistic sample counts; a parent never weighs less
    /// than its child).
    fn weights(&self) -> Vec<u64> {
        let [l, r] = self.total[0];
        let share = |v: u64, of: u64| if of == 0 { 0 } else { ((u128::from(v) << 40) / u128::from(of)) as u64 };
        self.total.iter().map(|t| share(t[0], l) + share(t[1], r)).collect()
    }

    /// Children of every node ordered heaviest first, then by name: deterministic.
    fn order_children(&mut self, weight: &[u64]) {
        let names = &self.names;
        let name = &self.name;
        for c in &mut self.children {
            c.sort_by(|&a, &b| {
                weight[b as usize]
                    .cmp(&weight[a as usize])
                    .then_with(|| names[name[a as usize] as usize].cmp(&names[name[b as usize] as usize]))
            });
        }
    }
}

impl Bars<2> for DiffTree {
    fn len(&self) -> usize {
        self.name.len()
    }
    fn parent(&self, node: u32) -> u32 {
        self.parent[node as usize]
    }
    fn children(&self, node: u32) -> &[u32] {
        &self.children[node as usize]
    }
    fn values(&self, node: u32) -> ([u64; 2], [u64; 2]) {
        let i = node as usize;
        (self.total[i], self.self_value[i])
    }
    fn name(&self, node: u32) -> (u32, &Arc<str>) {
        let id = self.name[node as usize];
        (id, &self.names[id as usize])
    }
    fn name_count(&self) -> usize {
        self.names.len()
    }
}

/// The diff flame graph of `left` and `right`, at most `max_nodes` bars (0 = every node).
pub fn diff(left: &Stacks, right: &Stacks, max_nodes: usize) -> DiffGraph {
    let mut tree = DiffTree::build(left, right);
    let weight = tree.weights();
    tree.order_children(&weight);
    let kept = flame::kept(&tree, |i| weight[i as usize], max_nodes);
    let Encoded { names, levels, max_self, bars, kept_nodes } = flame::encode(&tree, &kept);
    DiffGraph {
        names,
        levels,
        left_ticks: tree.total[0][0],
        right_ticks: tree.total[0][1],
        max_self,
        nodes: bars,
        dropped_nodes: tree.name.len() - kept_nodes,
    }
}

/// Every node of a diff graph with its stack and both values, decoded from the levels (the
/// inverse of the encoding, for tests and tools).
pub fn nodes(graph: &DiffGraph) -> Vec<DiffNode> {
    let mut out = Vec::new();
    // (left start, left total, right start, right total, stack) of the level above.
    type PlacedBar = (u64, u64, u64, u64, Vec<Arc<str>>);
    let mut above: Vec<PlacedBar> = Vec::new();
    for (depth, level) in graph.levels.iter().enumerate() {
        let mut here = Vec::new();
        let mut end = [0u64, 0u64];
        for bar in level.chunks(7) {
            let (xl, tl, xr, tr) = (end[0] + bar[0], bar[1], end[1] + bar[3], bar[4]);
            end = [xl + tl, xr + tr];
            let name = graph.names[bar[6] as usize].clone();
            let stack = if depth == 0 {
                Vec::new()
            } else {
                let parent = above.iter().find(|(pl, ptl, pr, ptr, _)| {
                    (tl == 0 || (*pl <= xl && xl + tl <= pl + ptl)) && (tr == 0 || (*pr <= xr && xr + tr <= pr + ptr))
                });
                let mut s = parent.map(|p| p.4.clone()).unwrap_or_default();
                s.push(name);
                s
            };
            if depth > 0 {
                out.push(DiffNode { stack: stack.clone(), left: tl, right: tr });
            }
            here.push((xl, tl, xr, tr, stack));
        }
        above = here;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stacks(s: &[(&[&str], u64)]) -> Stacks {
        s.iter().map(|(f, c)| (f.iter().map(|n| Arc::from(*n)).collect(), *c)).collect()
    }

    fn values(g: &DiffGraph) -> Vec<(String, u64, u64)> {
        let mut v: Vec<(String, u64, u64)> = nodes(g)
            .into_iter()
            .map(|n| (n.stack.iter().map(|f| &**f).collect::<Vec<_>>().join(";"), n.left, n.right))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn each_node_carries_both_sides() {
        let left = stacks(&[(&["main", "a", "b"], 30), (&["main", "a"], 10), (&["main", "c"], 20)]);
        let right = stacks(&[(&["main", "a", "b"], 5), (&["main", "d"], 15)]);
        let g = diff(&left, &right, 0);
        assert_eq!((g.left_ticks, g.right_ticks), (60, 20));
        assert_eq!(g.levels[0], vec![0, 60, 0, 0, 20, 0, 0], "the root, named total");
        assert_eq!(
            values(&g),
            [
                ("main".into(), 60, 20),
                ("main;a".into(), 40, 5),
                ("main;a;b".into(), 30, 5),
                ("main;c".into(), 20, 0),
                ("main;d".into(), 0, 15),
            ]
        );
        assert!(g.levels.iter().all(|l| l.len() % 7 == 0 && !l.is_empty()));
    }

    #[test]
    fn a_profile_against_itself_changes_nothing_and_an_empty_side_is_defined() {
        let p = stacks(&[(&["main", "a"], 3), (&["main", "b", "c"], 7)]);
        let same = diff(&p, &p, 0);
        assert!(values(&same).iter().all(|(_, l, r)| l == r));
        let empty = diff(&p, &Vec::new(), 0);
        assert_eq!((empty.left_ticks, empty.right_ticks), (10, 0));
        assert!(values(&empty).iter().all(|(_, _, r)| *r == 0));
        let none = diff(&Vec::new(), &Vec::new(), 0);
        assert_eq!(none.levels, vec![vec![0, 0, 0, 0, 0, 0, 0]]);
    }

    #[test]
    fn bounded_graphs_keep_totals_in_other_bars() {
        let left: Stacks =
            (0..50).map(|i| (vec![Arc::from("main"), Arc::from(format!("f{i}").as_str())], 1 + i)).collect();
        let right: Stacks =
            (0..50).map(|i| (vec![Arc::from("main"), Arc::from(format!("f{i}").as_str())], 50 - i)).collect();
        let g = diff(&left, &right, 10);
        assert!(g.nodes <= 10, "{} bars", g.nodes);
        assert!(g.names.iter().any(|n| &**n == crate::flame::OTHER_FRAME));
        let top: Vec<(String, u64, u64)> =
            values(&g).into_iter().filter(|(s, _, _)| s.matches(';').count() == 1).collect();
        assert_eq!(top.iter().map(|t| t.1).sum::<u64>(), g.left_ticks, "left total kept");
        assert_eq!(top.iter().map(|t| t.2).sum::<u64>(), g.right_ticks, "right total kept");
    }
}
