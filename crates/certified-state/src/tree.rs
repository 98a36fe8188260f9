//! The state tree: labeled paths to blobs, hashed as the interface defines (DFINITY's
//! `ic-certification` red-black trees), with witnesses that reveal the asked paths (or prove
//! them absent) and prune the rest.

use ic_certification::{
    empty, fork, label, leaf, pruned, AsHashTree, HashTree, HashTreeNode, NestedTree,
};

/// A path of labels, e.g. `["canister", <id>, "certified_data"]`.
pub type Path = Vec<Vec<u8>>;

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

/// Two witnesses of the same tree that disagree: they came from different trees.
#[derive(Debug, thiserror::Error)]
#[error("witnesses of one state disagree at {0}: they were not taken from the same tree")]
pub struct WitnessError(&'static str);

/// The state tree of one height.
#[derive(Clone, Default)]
pub struct StateTree(NestedTree<Vec<u8>, Vec<u8>>);

impl std::fmt::Debug for StateTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateTree(root {:02x?}…)", &self.root_hash()[..4])
    }
}

impl StateTree {
    /// Put a blob at a path (replacing what was there, including a subtree).
    pub fn set(&mut self, path: &[Vec<u8>], value: Vec<u8>) {
        self.0.insert(path, value);
    }

    /// Remove a path and everything under it.
    pub fn remove(&mut self, path: &[Vec<u8>]) {
        self.0.delete(path);
    }

    pub fn get(&self, path: &[Vec<u8>]) -> Option<&[u8]> {
        self.0.get(path).map(Vec::as_slice)
    }

    /// Whether anything (a blob or a subtree) is at this path.
    pub fn contains(&self, path: &[Vec<u8>]) -> bool {
        self.0.contains_path(path)
    }

    /// `/time`, in nanoseconds since 1970.
    pub fn set_time(&mut self, nanos: u64) {
        self.set(&[b"time".to_vec()], leb128(nanos));
    }

    pub fn root_hash(&self) -> [u8; 32] {
        self.0.root_hash()
    }

    /// A witness revealing `/time` and each of `paths` (an empty path reveals everything),
    /// proving absent paths absent, every other part pruned to its hash.
    pub fn witness(&self, paths: &[Path]) -> Result<HashTree, WitnessError> {
        let mut out = self.0.witness(&[b"time".to_vec()]);
        for p in paths {
            out = merge(out.into(), self.0.witness(p).into())?;
        }
        Ok(out)
    }
}

/// Merge two witnesses of one tree: where one is pruned the other's detail wins (its hash
/// must be the pruned one). `ic-certification` has a merge too, but it panics on witnesses
/// that disagree; a replica answering the network must not.
fn merge(a: HashTreeNode, b: HashTreeNode) -> Result<HashTree, WitnessError> {
    use ic_certification::hash_tree::HashTreeNode::*;
    match (a, b) {
        (Pruned(x), Pruned(y)) if x == y => Ok(pruned(x)),
        (Pruned(h), n) | (n, Pruned(h)) => {
            let t = rebuild(n);
            if t.digest() == h {
                Ok(t)
            } else {
                Err(WitnessError("a pruned node"))
            }
        }
        (Fork(l), Fork(r)) => {
            let ((l0, l1), (r0, r1)) = (*l, *r);
            Ok(fork(merge(l0, r0)?, merge(l1, r1)?))
        }
        (Labeled(x, l), Labeled(y, r)) if x == y => Ok(label(x, merge(*l, *r)?)),
        (Empty(), Empty()) => Ok(empty()),
        (Leaf(x), Leaf(y)) if x == y => Ok(leaf(x)),
        _ => Err(WitnessError("a node of different kinds or labels")),
    }
}

fn rebuild(n: HashTreeNode) -> HashTree {
    match n {
        HashTreeNode::Empty() => empty(),
        HashTreeNode::Fork(b) => {
            let (l, r) = *b;
            fork(rebuild(l), rebuild(r))
        }
        HashTreeNode::Labeled(l, t) => label(l, rebuild(*t)),
        HashTreeNode::Leaf(v) => leaf(v),
        HashTreeNode::Pruned(h) => pruned(h),
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
        let w = t.witness(std::slice::from_ref(&p)).unwrap();
        assert_eq!(w.digest(), t.root_hash());
        assert_eq!(w.lookup_path(&p), LookupResult::Found(b"replied"));
        assert_eq!(w.lookup_path([b"time"]), LookupResult::Found(&[42]));
        // Other requests are pruned: not revealed, not claimed absent.
        let other = [b"request_status".to_vec(), vec![8], b"status".to_vec()];
        assert_eq!(w.lookup_path(&other), LookupResult::Unknown);
        // An id that is not there is proven absent.
        let absent = [b"request_status".to_vec(), vec![200], b"status".to_vec()];
        let w = t.witness(&[absent.to_vec()]).unwrap();
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
        let w = t.witness(&paths).unwrap();
        assert_eq!(w.digest(), t.root_hash());
        for p in &paths[..paths.len() - 1] {
            assert!(matches!(w.lookup_path(p), LookupResult::Found(_)), "{p:?}");
        }
        assert_eq!(w.lookup_path([b"nothing"]), LookupResult::Absent);
    }

    #[test]
    fn witnesses_of_different_trees_are_refused_not_merged() {
        let (a, mut b) = (sample(), sample());
        b.set_time(43);
        let wa = a.witness(&[]).unwrap();
        let wb = b.witness(&[]).unwrap();
        assert!(merge(wa.into(), wb.into()).is_err());
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
}
