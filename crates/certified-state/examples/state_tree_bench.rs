//! The state tree against `ic-certification`'s `NestedTree` (which it replaced because its
//! root depends on insertion order): the same 100,000 requests recorded into each (status,
//! a 64-byte reply, the time), with the root hash taken after every one, as a replica does
//! per executed call. Prints both and the ratio; rounds alternate.
//!
//! `cargo run --release -p certified-state --example state_tree_bench`

use ic_certification::{AsHashTree, NestedTree};
use std::time::{Duration, Instant};

const N: u32 = 100_000;

fn id(i: u32) -> Vec<u8> {
    ic_certification::leaf(i.to_be_bytes().to_vec())
        .digest()
        .to_vec()
}

fn ours() -> Duration {
    let t0 = Instant::now();
    let mut t = certified_state::StateTree::default();
    for i in 0..N {
        let at = |f: &str| vec![b"request_status".to_vec(), id(i), f.as_bytes().to_vec()];
        t.set(&at("status"), b"replied".to_vec());
        t.set(&at("reply"), vec![0; 64]);
        t.set_time(u64::from(i));
        std::hint::black_box(t.root_hash());
    }
    t0.elapsed()
}

fn nested() -> Duration {
    let t0 = Instant::now();
    let mut t: NestedTree<Vec<u8>, Vec<u8>> = NestedTree::default();
    for i in 0..N {
        let at = |f: &str| vec![b"request_status".to_vec(), id(i), f.as_bytes().to_vec()];
        t.insert(&at("status"), b"replied".to_vec());
        t.insert(&at("reply"), vec![0; 64]);
        t.insert(&[b"time".to_vec()], certified_state::leb128(u64::from(i)));
        std::hint::black_box(t.root_hash());
    }
    t0.elapsed()
}

fn main() {
    let mut ratios = Vec::new();
    for round in 1..=3 {
        let (a, b) = (ours(), nested());
        let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(N);
        println!(
            "round {round}: state tree {:.1} µs/request, NestedTree {:.1} µs/request",
            per(a),
            per(b)
        );
        ratios.push(a.as_secs_f64() / b.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "state tree / NestedTree time (median of 3): {:.3}",
        ratios[1]
    );
}
