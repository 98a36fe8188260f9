//! The state tree: labeled paths to blobs, hashed as the interface defines (the node kinds and
//! digests of DFINITY's `ic-certification`), with witnesses that reveal the asked paths (or
//! prove them absent) and prune the rest.
//!
//! **Why not `ic-certification`'s `NestedTree`:** its red-black trees take a shape that
//! depends on the order of insertions and deletions, so two replicas holding the same state
//! after different histories (or one restarted from a checkpoint) have different roots, and
//! a subnet's nodes could never agree on one. Each level here is a treap ordered by label
//! whose priorities are the labels' own hashes: its shape, and so its root, is a function of
//! the labels alone, while an update costs O(log n) hashes (every node caches its subtree's
//! digest). The hashing itself (fork, labeled, leaf, pruned, empty) is still
//! `ic-certification`'s, so every agent verifies what this tree certifies.

use ic_certification::{empty, fork, label, leaf, pruned, HashTree};
use std::cmp::Ordering;

/// A path of labels, e.g. `["canister", <id>, "certified_data"]`.
pub type Path = Vec<Vec<u8>>;

type Hash = [u8; 32];

/// A path from text labels (for the fixed parts of a path).
pub fn path<const N: usize>(labels: [&str; N]) -> Path {
    labels.iter().map(|l| l.as_bytes().to_vec()).collect()
}

/// Natural numbers in the tree (`/time`, `/request_status/.../reject_code`) are LEB128.
pub fn leb128(n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    leb128::write::unsigned(&mut out, n).expect("writing to a Vec cannot fail");
    out
}

/// The state tree of one height.
#[derive(Clone, Default)]
pub struct StateTree(Level);

impl std::fmt::Debug for StateTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateTree(root {:02x?}…)", &self.root_hash()[..4])
    }
}

impl StateTree {
    /// Put a blob at a path (replacing what was there, including a subtree). An empty path
    /// changes nothing.
    pub fn set(&mut self, path: &[Vec<u8>], value: Vec<u8>) {
        self.0.set(path, value);
    }

    /// Remove a path and everything under it; a level left empty goes too, so the tree
    /// depends only on the blobs it holds.
    pub fn remove(&mut self, path: &[Vec<u8>]) {
        self.0.remove(path);
    }

    pub fn get(&self, path: &[Vec<u8>]) -> Option<&[u8]> {
        match self.0.find(path)? {
            Value::Leaf(v) => Some(v),
            Value::Sub(_) => None,
        }
    }

    /// Whether anything (a blob or a subtree) is at this path.
    pub fn contains(&self, path: &[Vec<u8>]) -> bool {
        self.0.find(path).is_some()
    }

    /// `/time`, in nanoseconds since 1970.
    pub fn set_time(&mut self, nanos: u64) {
        self.set(&[b"time".to_vec()], leb128(nanos));
    }

    pub fn root_hash(&self) -> [u8; 32] {
        self.0.hash()
    }

    /// A witness revealing `/time` and each of `paths` (an empty path reveals everything),
    /// proving absent paths absent, every other part pruned to its hash.
    pub fn witness(&self, paths: &[Path]) -> HashTree {
        let time = vec![b"time".to_vec()];
        let all: Vec<&[Vec<u8>]> = std::iter::once(time.as_slice())
            .chain(paths.iter().map(Vec::as_slice))
            .collect();
        self.0.witness(&all)
    }
}

/// What a label holds.
#[derive(Clone)]
enum Value {
    Leaf(Vec<u8>),
    Sub(Level),
}

impl Value {
    fn hash(&self) -> Hash {
        match self {
            Value::Leaf(v) => leaf(v.as_slice()).digest(),
            Value::Sub(l) => l.hash(),
        }
    }

    /// Reveal what the remaining paths ask for: a blob whole, a level as far as asked.
    fn witness(&self, rests: &[&[Vec<u8>]]) -> HashTree {
        match self {
            Value::Leaf(v) => leaf(v.clone()),
            Value::Sub(l) => l.witness(rests),
        }
    }
}

/// One level: a treap by label (a search tree in label order, a heap by the label's hash).
#[derive(Clone, Default)]
struct Level(Option<Box<Node>>);

#[derive(Clone)]
struct Node {
    label: Vec<u8>,
    priority: Hash,
    value: Value,
    value_hash: Hash,
    left: Level,
    right: Level,
    /// The digest of this subtree as [`Node::shape`] lays it out.
    hash: Hash,
}

impl Node {
    fn new(label: &[u8], value: Value) -> Box<Node> {
        let mut n = Box::new(Node {
            priority: leaf(label).digest(),
            label: label.to_vec(),
            value_hash: value.hash(),
            value,
            left: Level::default(),
            right: Level::default(),
            hash: [0; 32],
        });
        n.rehash();
        n
    }

    /// The node's place in the hash tree, given what to show of the label's value and of
    /// each side: `fork(left, fork(labeled, right))`, with empty sides left out.
    fn shape(&self, me: HashTree, left: Option<HashTree>, right: Option<HashTree>) -> HashTree {
        let me = label(self.label.clone(), me);
        match (left, right) {
            (None, None) => me,
            (Some(l), None) => fork(l, me),
            (None, Some(r)) => fork(me, r),
            (Some(l), Some(r)) => fork(l, fork(me, r)),
        }
    }

    fn rehash(&mut self) {
        let side = |l: &Level| l.0.as_ref().map(|n| pruned(n.hash));
        self.hash = self
            .shape(pruned(self.value_hash), side(&self.left), side(&self.right))
            .digest();
    }

    fn child(&mut self, left: bool) -> &mut Level {
        if left {
            &mut self.left
        } else {
            &mut self.right
        }
    }

    fn set_value(&mut self, value: Value) {
        self.value_hash = value.hash();
        self.value = value;
        self.rehash();
    }
}

impl Level {
    fn hash(&self) -> Hash {
        self.0.as_ref().map_or_else(|| empty().digest(), |n| n.hash)
    }

    fn find(&self, path: &[Vec<u8>]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        let mut at = self.0.as_deref();
        while let Some(n) = at {
            at = match first.cmp(&n.label) {
                Ordering::Less => n.left.0.as_deref(),
                Ordering::Greater => n.right.0.as_deref(),
                Ordering::Equal if rest.is_empty() => return Some(&n.value),
                Ordering::Equal => match &n.value {
                    Value::Sub(l) => return l.find(rest),
                    Value::Leaf(_) => return None,
                },
            };
        }
        None
    }

    fn set(&mut self, path: &[Vec<u8>], value: Vec<u8>) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        self.update(first, &mut |old| {
            Some(if rest.is_empty() {
                Value::Leaf(value.clone())
            } else {
                let mut sub = match old {
                    Some(Value::Sub(l)) => l,
                    _ => Level::default(),
                };
                sub.set(rest, value.clone());
                Value::Sub(sub)
            })
        });
    }

    fn remove(&mut self, path: &[Vec<u8>]) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        self.update(first, &mut |old| match old {
            _ if rest.is_empty() => None,
            Some(Value::Sub(mut l)) => {
                l.remove(rest);
                l.0.is_some().then_some(Value::Sub(l))
            }
            other => other,
        });
    }

    /// Replace what `key` holds by `f` of it (`None`: absent), keeping the treap's order and
    /// heap, and every hash on the way back up.
    fn update(&mut self, key: &[u8], f: &mut dyn FnMut(Option<Value>) -> Option<Value>) {
        let Some(n) = self.0.as_mut() else {
            if let Some(v) = f(None) {
                self.0 = Some(Node::new(key, v));
            }
            return;
        };
        match key.cmp(n.label.as_slice()) {
            Ordering::Equal => {
                let old = std::mem::replace(&mut n.value, Value::Leaf(Vec::new()));
                match f(Some(old)) {
                    Some(v) => n.set_value(v),
                    None => {
                        let (l, r) = (n.left.0.take(), n.right.0.take());
                        self.0 = merge(l, r);
                    }
                }
            }
            side => {
                let left = side == Ordering::Less;
                let priority = n.priority;
                let child = n.child(left);
                child.update(key, f);
                if child.0.as_ref().is_some_and(|c| c.priority > priority) {
                    self.rotate(left);
                } else {
                    n.rehash();
                }
            }
        }
    }

    /// The child on one side rises above this node (left: `(L a b) c` becomes `a (N b c)`;
    /// right is its mirror), keeping the label order.
    fn rotate(&mut self, left: bool) {
        let Some(mut n) = self.0.take() else { return };
        let Some(mut up) = n.child(left).0.take() else {
            self.0 = Some(n);
            return;
        };
        *n.child(left) = std::mem::take(up.child(!left));
        n.rehash();
        *up.child(!left) = Level(Some(n));
        up.rehash();
        self.0 = Some(up);
    }

    /// This level, revealing the labels `paths` start with (and the rest of each path below
    /// them); an empty path reveals the whole level.
    fn witness(&self, paths: &[&[Vec<u8>]]) -> HashTree {
        if paths.iter().any(|p| p.is_empty()) {
            return self.reveal(&[], true);
        }
        let mut wanted: Vec<(&[u8], &[Vec<u8>])> = paths
            .iter()
            .filter_map(|p| p.split_first().map(|(f, r)| (f.as_slice(), r)))
            .collect();
        wanted.sort();
        self.reveal(&wanted, false)
    }

    /// Every node on the way to a wanted label is shown (so an absent one is proven absent
    /// between its neighbours); subtrees no wanted label leads into are pruned.
    fn reveal(&self, wanted: &[(&[u8], &[Vec<u8>])], all: bool) -> HashTree {
        let Some(n) = self.0.as_deref() else {
            return empty();
        };
        if !all && wanted.is_empty() {
            return pruned(n.hash);
        }
        let lo = wanted.partition_point(|(l, _)| *l < n.label.as_slice());
        let hi = wanted.partition_point(|(l, _)| *l <= n.label.as_slice());
        let me = if all {
            n.value.witness(&[&[]])
        } else if lo < hi {
            let rests: Vec<&[Vec<u8>]> = wanted[lo..hi].iter().map(|(_, r)| *r).collect();
            n.value.witness(&rests)
        } else {
            pruned(n.value_hash)
        };
        let side = |l: &Level, w: &[(&[u8], &[Vec<u8>])]| l.0.as_ref().map(|_| l.reveal(w, all));
        n.shape(
            me,
            side(&n.left, &wanted[..lo]),
            side(&n.right, &wanted[hi..]),
        )
    }
}

/// Join two treaps whose labels all sort `a` before `b`.
fn merge(a: Option<Box<Node>>, b: Option<Box<Node>>) -> Option<Box<Node>> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(mut a), Some(mut b)) => {
            if a.priority > b.priority {
                a.right = Level(merge(a.right.0.take(), Some(b)));
                a.rehash();
                Some(a)
            } else {
                b.left = Level(merge(Some(a), b.left.0.take()));
                b.rehash();
                Some(b)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_certification::LookupResult;

    fn sample() -> StateTree {
        let mut t = StateTree::default();
        t.set_time(42);
        for i in 0..20u8 {
            t.set(
                &[b"request_status".to_vec(), vec![i], b"status".to_vec()],
                b"replied".to_vec(),
            );
        }
        t.set(&path(["canister", "c", "certified_data"]), b"cd".to_vec());
        t
    }

    #[test]
    fn leb128_matches_the_spec_examples() {
        assert_eq!(leb128(0), [0]);
        assert_eq!(leb128(127), [0x7f]);
        assert_eq!(leb128(624485), [0xe5, 0x8e, 0x26]);
        assert_eq!(leb128(u64::MAX).len(), 10);
    }

    #[test]
    fn witnesses_reveal_what_was_asked_and_keep_the_root() {
        let t = sample();
        let p = vec![b"request_status".to_vec(), vec![7], b"status".to_vec()];
        let w = t.witness(std::slice::from_ref(&p));
        assert_eq!(w.digest(), t.root_hash());
        assert_eq!(w.lookup_path(&p), LookupResult::Found(b"replied"));
        assert_eq!(w.lookup_path([b"time"]), LookupResult::Found(&[42]));
        // Other requests are pruned: not revealed, not claimed absent.
        let other = [b"request_status".to_vec(), vec![8], b"status".to_vec()];
        assert_eq!(w.lookup_path(&other), LookupResult::Unknown);
        // An id that is not there is proven absent.
        let absent = [b"request_status".to_vec(), vec![200], b"status".to_vec()];
        let w = t.witness(&[absent.to_vec()]);
        assert_eq!(w.digest(), t.root_hash());
        assert_eq!(w.lookup_path(&absent), LookupResult::Absent);
    }

    #[test]
    fn several_paths_merge_into_one_witness() {
        let t = sample();
        let paths: Vec<Path> = (0..20u8)
            .step_by(3)
            .map(|i| vec![b"request_status".to_vec(), vec![i], b"status".to_vec()])
            .chain([path(["canister", "c", "certified_data"]), path(["nothing"])])
            .collect();
        let w = t.witness(&paths);
        assert_eq!(w.digest(), t.root_hash());
        for p in &paths[..paths.len() - 1] {
            assert!(matches!(w.lookup_path(p), LookupResult::Found(_)), "{p:?}");
        }
        assert_eq!(w.lookup_path([b"nothing"]), LookupResult::Absent);
    }

    #[test]
    fn removing_a_subtree_removes_what_is_under_it() {
        let mut t = sample();
        let before = t.root_hash();
        t.set(&path(["canister", "d", "module_hash"]), vec![1; 32]);
        assert_ne!(t.root_hash(), before);
        t.remove(&path(["canister", "d"]));
        assert!(!t.contains(&path(["canister", "d"])));
        assert_eq!(
            t.get(&path(["canister", "c", "certified_data"])),
            Some(&b"cd"[..])
        );
    }

    /// Two replicas apply the same state through different histories.
    #[test]
    fn the_root_depends_on_the_contents_not_the_history() {
        use rand::{seq::SliceRandom, Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let paths: Vec<Path> = (0..300u32)
            .map(|i| {
                let id = rng.gen::<[u8; 32]>().to_vec();
                vec![
                    b"request_status".to_vec(),
                    id,
                    format!("f{}", i % 3).into_bytes(),
                ]
            })
            .collect();
        let mut a = StateTree::default();
        for p in &paths {
            a.set(p, p[1].clone());
        }
        let mut shuffled = paths.clone();
        shuffled.shuffle(&mut rng);
        let mut b = StateTree::default();
        // b also holds and drops entries a never had, and sets some twice.
        for (i, p) in shuffled.iter().enumerate() {
            b.set(
                &path(["canister", &format!("x{i}"), "module_hash"]),
                vec![1],
            );
            b.set(p, vec![0]);
            b.set(p, p[1].clone());
        }
        for i in 0..shuffled.len() {
            b.remove(&path(["canister", &format!("x{i}")]));
        }
        assert!(
            !b.contains(&path(["canister"])),
            "an emptied level goes too"
        );
        assert_eq!(a.root_hash(), b.root_hash());
        // Removing half in different orders gives the same root again.
        let (mut a2, mut b2) = (a.clone(), b.clone());
        for p in paths.iter().step_by(2) {
            a2.remove(p);
        }
        for p in paths.iter().step_by(2).rev() {
            b2.remove(&p[..2]);
        }
        let mut fresh = StateTree::default();
        for p in paths.iter().skip(1).step_by(2) {
            fresh.set(p, p[1].clone());
        }
        assert_eq!(a2.root_hash(), fresh.root_hash());
        assert_eq!(b2.root_hash(), fresh.root_hash());
        assert_ne!(a2.root_hash(), a.root_hash());
    }

    /// Against a plain map of paths: every present path is found in a witness for it, every
    /// other one proven absent, and every witness has the tree's root.
    #[test]
    fn witnesses_agree_with_a_map_of_the_contents() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut t = StateTree::default();
        let mut model = std::collections::BTreeMap::<Path, Vec<u8>>::new();
        let key = |rng: &mut rand::rngs::StdRng| -> Path {
            vec![vec![rng.gen_range(0..3u8)], vec![rng.gen_range(0..40u8)]]
        };
        for step in 0..2000 {
            let p = key(&mut rng);
            if rng.gen_bool(0.3) {
                t.remove(&p);
                model.remove(&p);
            } else {
                let v = vec![step as u8, rng.gen()];
                t.set(&p, v.clone());
                model.insert(p, v);
            }
            if step % 50 == 0 {
                let probe = key(&mut rng);
                let w = t.witness(std::slice::from_ref(&probe));
                assert_eq!(w.digest(), t.root_hash());
                match model.get(&probe) {
                    Some(v) => assert_eq!(w.lookup_path(&probe), LookupResult::Found(v)),
                    None => assert!(
                        matches!(w.lookup_path(&probe), LookupResult::Absent),
                        "{probe:?}: {:?}",
                        w.lookup_path(&probe)
                    ),
                }
                assert_eq!(t.get(&probe), model.get(&probe).map(Vec::as_slice));
            }
        }
        let full = t.witness(&[vec![]]);
        assert_eq!(full.digest(), t.root_hash());
        for (p, v) in &model {
            assert_eq!(full.lookup_path(p), LookupResult::Found(v));
        }
    }
}
