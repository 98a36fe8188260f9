//! The runtime against real Wasm: the repository's counter canister, and small modules
//! written for one behaviour each (traps roll back, queries change nothing, limits stop
//! loops and hungry canisters, the system API refuses misuse, modules are checked).

use canister_runtime::*;

const COUNTER: &str = example_canisters::COUNTER_WAT;

fn rt() -> Runtime {
    Runtime::new(Limits {
        instructions_per_message: 50_000_000,
        instructions_per_install: 100_000_000,
        heap_bytes: 16 << 20,
        stable_bytes: 1 << 20,
    })
    .unwrap()
}

fn code(rt: &Runtime, wat: &str) -> Code {
    rt.compile(&wat::parse_str(wat).unwrap()).unwrap()
}

fn ctx() -> Context {
    Context {
        canister_id: vec![0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
        caller: vec![4],
        time_ns: 1_700_000_000_000_000_000,
        ..Default::default()
    }
}

/// Install; the memory after init.
fn install(rt: &Runtime, code: &Code) -> CanisterMemory {
    let e = rt
        .execute(code, &CanisterMemory::default(), &Entry::Init, &ctx())
        .unwrap();
    assert_eq!(e.outcome, Outcome::Done, "{e:?}");
    e.memory.unwrap()
}

fn update(rt: &Runtime, code: &Code, mem: &mut CanisterMemory, m: &str) -> Execution {
    let e = rt
        .execute(code, mem, &Entry::Update(m.into()), &ctx())
        .unwrap();
    if let Some(after) = &e.memory {
        *mem = after.clone();
    }
    e
}

fn query(rt: &Runtime, code: &Code, mem: &CanisterMemory, m: &str) -> Execution {
    rt.execute(code, mem, &Entry::Query(m.into()), &ctx())
        .unwrap()
}

fn nat64(v: u64) -> Outcome {
    let mut r = b"DIDL\x00\x01\x78".to_vec();
    r.extend_from_slice(&v.to_le_bytes());
    Outcome::Reply(r)
}

#[test]
fn the_counter_counts_certifies_and_keeps_its_value_across_an_upgrade() {
    let rt = rt();
    let c = code(&rt, COUNTER);
    assert!(c.methods().updates.contains("inc") && c.methods().queries.contains("get"));
    let mut mem = install(&rt, &c);
    for i in 1..=3 {
        let e = update(&rt, &c, &mut mem, "inc");
        assert_eq!(e.outcome, nat64(i));
        assert_eq!(e.certified_data, Some(i.to_le_bytes().to_vec()));
        assert!(e.instructions > 0);
    }
    assert_eq!(query(&rt, &c, &mem, "get").outcome, nat64(3));

    // Upgrade to the same code: pre_upgrade on the old instance, post_upgrade on a fresh one
    // that has only the stable memory.
    let pre = rt.execute(&c, &mem, &Entry::PreUpgrade, &ctx()).unwrap();
    assert_eq!(pre.outcome, Outcome::Done);
    let stable = pre.memory.unwrap().stable;
    assert_eq!(stable.len(), 64 << 10);
    let fresh = CanisterMemory {
        stable,
        ..Default::default()
    };
    let post = rt.execute(&c, &fresh, &Entry::PostUpgrade, &ctx()).unwrap();
    assert_eq!(post.outcome, Outcome::Done);
    assert_eq!(post.certified_data, Some(3u64.to_le_bytes().to_vec()));
    let mut mem = post.memory.unwrap();
    assert_eq!(update(&rt, &c, &mut mem, "inc").outcome, nat64(4));
}

#[test]
fn a_trap_undoes_everything_and_a_query_changes_nothing() {
    let rt = rt();
    let c = code(
        &rt,
        r#"(module
        (import "ic0" "msg_reply" (func $reply))
        (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
        (import "ic0" "trap" (func $trap (param i32 i32)))
        (import "ic0" "stable64_grow" (func $grow (param i64) (result i64)))
        (memory (export "memory") 1)
        (global $g (mut i64) (i64.const 0))
        (data (i32.const 100) "no more")
        (func $bump (global.set $g (i64.add (global.get $g) (i64.const 1)))
              (i64.store (i32.const 0) (global.get $g)))
        (func $reply_g (i64.store (i32.const 8) (global.get $g))
              (call $append (i32.const 8) (i32.const 8)) (call $reply))
        (func (export "canister_update bump") (call $bump) (call $reply_g))
        (func (export "canister_update bump_then_trap")
              (call $bump) (drop (call $grow (i64.const 1))) (call $trap (i32.const 100) (i32.const 7)))
        (func (export "canister_query bump_in_query") (call $bump) (call $reply_g))
        (func (export "canister_query get") (call $reply_g)))"#,
    );
    let mut mem = install(&rt, &c);
    let one = Outcome::Reply(1u64.to_le_bytes().to_vec());
    assert_eq!(update(&rt, &c, &mut mem, "bump").outcome, one);
    let before = mem.clone();
    let e = update(&rt, &c, &mut mem, "bump_then_trap");
    assert_eq!(e.outcome, Outcome::Trap(Trap::Explicit("no more".into())));
    assert!(e.memory.is_none());
    assert_eq!(mem, before, "the trapped message left a change behind");
    // A query sees its own change but leaves none.
    assert_eq!(
        query(&rt, &c, &mem, "bump_in_query").outcome,
        Outcome::Reply(2u64.to_le_bytes().to_vec())
    );
    assert_eq!(query(&rt, &c, &mem, "get").outcome, one);
}

#[test]
fn the_start_function_runs_once_at_install_and_globals_persist() {
    let rt = rt();
    let c = code(
        &rt,
        r#"(module
        (import "ic0" "msg_reply" (func $reply))
        (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
        (memory (export "memory") 1)
        (global $starts (mut i32) (i32.const 0))
        (global $calls (mut i32) (i32.const 0))
        (func $start (global.set $starts (i32.add (global.get $starts) (i32.const 1))))
        (start $start)
        (func (export "canister_update call")
          (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
          (i32.store (i32.const 0) (global.get $starts))
          (i32.store (i32.const 4) (global.get $calls))
          (call $append (i32.const 0) (i32.const 8)) (call $reply)))"#,
    );
    let mut mem = install(&rt, &c);
    for calls in 1..=3u32 {
        let mut want = 1u32.to_le_bytes().to_vec();
        want.extend_from_slice(&calls.to_le_bytes());
        assert_eq!(
            update(&rt, &c, &mut mem, "call").outcome,
            Outcome::Reply(want)
        );
    }
}

#[test]
fn a_looping_canister_is_stopped_and_others_keep_running() {
    let rt = rt();
    let looping = code(
        &rt,
        r#"(module (memory (export "memory") 1)
        (func (export "canister_update spin") (loop $l (br $l)))
        (func (export "canister_query spin_query") (loop $l (br $l))))"#,
    );
    let mut lmem = install(&rt, &looping);
    let counter = code(&rt, COUNTER);
    let mut cmem = install(&rt, &counter);
    let t = std::time::Instant::now();
    let e = update(&rt, &looping, &mut lmem, "spin");
    assert_eq!(e.outcome, Outcome::Trap(Trap::InstructionLimit(50_000_000)));
    assert!(e.instructions >= 50_000_000);
    assert_eq!(
        query(&rt, &looping, &lmem, "spin_query").outcome,
        Outcome::Trap(Trap::InstructionLimit(50_000_000))
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(update(&rt, &counter, &mut cmem, "inc").outcome, nat64(1));
}

#[test]
fn memory_hungry_canisters_hit_their_limits() {
    let rt = rt();
    // Grows the heap a page at a time until refused, then traps.
    let heap = code(
        &rt,
        r#"(module (memory (export "memory") 1)
        (func (export "canister_update eat")
          (loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
          unreachable))"#,
    );
    let mut mem = install(&rt, &heap);
    let e = update(&rt, &heap, &mut mem, "eat");
    match &e.outcome {
        Outcome::Trap(Trap::Wasm(m)) => assert!(m.contains("unreachable"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(mem.heap.len(), 64 << 10, "the grown heap stayed");
    // Stable memory: grow beyond the limit answers -1.
    let stable = code(
        &rt,
        r#"(module
        (import "ic0" "stable64_grow" (func $grow (param i64) (result i64)))
        (import "ic0" "msg_reply" (func $reply))
        (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
        (memory (export "memory") 1)
        (func (export "canister_update grow")
          (i64.store (i32.const 0) (call $grow (i64.const 17)))
          (i64.store (i32.const 8) (call $grow (i64.const 16)))
          (call $append (i32.const 0) (i32.const 16)) (call $reply)))"#,
    );
    let mut mem = install(&rt, &stable);
    let mut want = (-1i64).to_le_bytes().to_vec();
    want.extend_from_slice(&0i64.to_le_bytes());
    assert_eq!(
        update(&rt, &stable, &mut mem, "grow").outcome,
        Outcome::Reply(want)
    );
    assert_eq!(mem.stable.len(), 1 << 20);
}

#[test]
fn deep_recursion_is_a_trap_not_a_crash() {
    let rt = rt();
    let c = code(
        &rt,
        r#"(module (memory (export "memory") 1)
        (func $r (param i64) (result i64) (i64.add (call $r (local.get 0)) (i64.const 1)))
        (func (export "canister_update deep") (drop (call $r (i64.const 0)))))"#,
    );
    let mut mem = install(&rt, &c);
    match update(&rt, &c, &mut mem, "deep").outcome {
        Outcome::Trap(Trap::Wasm(m)) => assert!(m.contains("stack"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_system_api_refuses_misuse() {
    let rt = rt();
    let c = code(
        &rt,
        r#"(module
        (import "ic0" "msg_reply" (func $reply))
        (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
        (import "ic0" "msg_arg_data_copy" (func $arg (param i32 i32 i32)))
        (import "ic0" "data_certificate_size" (func $cert_size (result i32)))
        (import "ic0" "certified_data_set" (func $certify (param i32 i32)))
        (import "ic0" "msg_reject" (func $reject (param i32 i32)))
        (memory (export "memory") 1)
        (data (i32.const 0) "nope")
        (func (export "canister_update twice") (call $reply) (call $reply))
        (func (export "canister_update silent"))
        (func (export "canister_update arg_oob") (call $arg (i32.const 0) (i32.const 0) (i32.const 100)))
        (func (export "canister_update heap_oob") (call $append (i32.const 65530) (i32.const 100)))
        (func (export "canister_update cert_in_update") (drop (call $cert_size)))
        (func (export "canister_query certify_in_query") (call $certify (i32.const 0) (i32.const 4)))
        (func (export "canister_update certify_too_much") (call $certify (i32.const 0) (i32.const 33)))
        (func (export "canister_update reject")
           (i32.store8 (i32.const 10) (i32.const 1)) (call $reject (i32.const 0) (i32.const 4))))"#,
    );
    let mut mem = install(&rt, &c);
    let api = |m: &str, mem: &mut CanisterMemory| match update(&rt, &c, mem, m).outcome {
        Outcome::Trap(t) => t,
        other => panic!("{m}: {other:?}"),
    };
    let said = |t: Trap, what: &str| match t {
        Trap::SystemApi(m) => assert!(m.contains(what), "{m}"),
        other => panic!("{other:?}"),
    };
    said(api("twice", &mut mem), "already answered");
    assert_eq!(api("silent", &mut mem), Trap::NoResponse);
    said(api("arg_oob", &mut mem), "bytes 0..100 asked of 0 bytes");
    said(api("heap_oob", &mut mem), "outside the heap");
    said(
        api("cert_in_update", &mut mem),
        "cannot be called in an update method",
    );
    said(api("certify_too_much", &mut mem), "at most 32");
    match query(&rt, &c, &mem, "certify_in_query").outcome {
        Outcome::Trap(t) => said(t, "cannot be called in a query method"),
        other => panic!("{other:?}"),
    }
    // An explicit reject is an answer: the update's changes stand.
    let e = update(&rt, &c, &mut mem, "reject");
    assert_eq!(e.outcome, Outcome::Reject("nope".into()));
    assert_eq!(mem.heap[10], 1);
    assert_eq!(
        update(&rt, &c, &mut mem, "missing").outcome,
        Outcome::Trap(Trap::NoMethod("missing".into()))
    );
}

#[test]
fn the_message_sees_its_caller_argument_self_time_and_certificate() {
    let rt = rt();
    let c = code(
        &rt,
        r#"(module
        (import "ic0" "msg_reply" (func $reply))
        (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
        (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
        (import "ic0" "msg_arg_data_copy" (func $arg (param i32 i32 i32)))
        (import "ic0" "msg_caller_size" (func $caller_size (result i32)))
        (import "ic0" "msg_caller_copy" (func $caller (param i32 i32 i32)))
        (import "ic0" "canister_self_size" (func $self_size (result i32)))
        (import "ic0" "canister_self_copy" (func $self (param i32 i32 i32)))
        (import "ic0" "time" (func $time (result i64)))
        (import "ic0" "data_certificate_present" (func $has_cert (result i32)))
        (import "ic0" "data_certificate_size" (func $cert_size (result i32)))
        (import "ic0" "data_certificate_copy" (func $cert (param i32 i32 i32)))
        (import "ic0" "in_replicated_execution" (func $replicated (result i32)))
        (memory (export "memory") 1)
        (global $p (mut i32) (i32.const 0))
        (func $put (param $len i32) (global.set $p (i32.add (global.get $p) (local.get $len))))
        (func (export "canister_query who")
          (global.set $p (i32.const 0))
          (call $arg (global.get $p) (i32.const 0) (call $arg_size)) (call $put (call $arg_size))
          (call $caller (global.get $p) (i32.const 0) (call $caller_size)) (call $put (call $caller_size))
          (call $self (global.get $p) (i32.const 0) (call $self_size)) (call $put (call $self_size))
          (i64.store (global.get $p) (call $time)) (call $put (i32.const 8))
          (i32.store8 (global.get $p) (call $replicated)) (call $put (i32.const 1))
          (if (call $has_cert) (then
            (call $cert (global.get $p) (i32.const 0) (call $cert_size)) (call $put (call $cert_size))))
          (call $append (i32.const 0) (global.get $p)) (call $reply)))"#,
    );
    let mem = install(&rt, &c);
    let mut cx = ctx();
    cx.arg = b"ARG".to_vec();
    cx.data_certificate = Some(b"CERT".to_vec());
    let e = rt
        .execute(&c, &mem, &Entry::Query("who".into()), &cx)
        .unwrap();
    let mut want = b"ARG".to_vec();
    want.extend_from_slice(&cx.caller);
    want.extend_from_slice(&cx.canister_id);
    want.extend_from_slice(&cx.time_ns.to_le_bytes());
    want.push(0);
    want.extend_from_slice(b"CERT");
    assert_eq!(e.outcome, Outcome::Reply(want));
}

#[test]
fn inspect_message_accepts_by_method_name() {
    let rt = rt();
    let c = code(
        &rt,
        r#"(module
        (import "ic0" "accept_message" (func $accept))
        (import "ic0" "msg_method_name_size" (func $size (result i32)))
        (memory (export "memory") 1)
        (func (export "canister_inspect_message")
          (if (i32.eq (call $size) (i32.const 2)) (then (call $accept)))))"#,
    );
    let mem = install(&rt, &c);
    let inspect = |m: &str| {
        rt.execute(&c, &mem, &Entry::InspectMessage(m.into()), &ctx())
            .unwrap()
            .accepted
    };
    assert!(inspect("ok"));
    assert!(!inspect("refused"));
}

#[test]
fn nans_are_canonical_on_every_node() {
    let rt = rt();
    // 0/0 gives a NaN whose sign and payload vary by CPU; canonicalized it is 0x7fc00000.
    let c = code(
        &rt,
        r#"(module
        (import "ic0" "msg_reply" (func $reply))
        (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
        (memory (export "memory") 1)
        (func (export "canister_query nan")
          (f32.store (i32.const 0) (f32.div (f32.const 0) (f32.const 0)))
          (f32.store (i32.const 4) (f32.neg (f32.div (f32.const 0) (f32.const 0))))
          (f32.store (i32.const 4) (f32.add (f32.load (i32.const 4)) (f32.const 1)))
          (call $append (i32.const 0) (i32.const 8)) (call $reply)))"#,
    );
    let mem = install(&rt, &c);
    let mut want = 0x7fc0_0000u32.to_le_bytes().to_vec();
    want.extend_from_slice(&0x7fc0_0000u32.to_le_bytes());
    assert_eq!(query(&rt, &c, &mem, "nan").outcome, Outcome::Reply(want));
}

#[test]
fn every_system_api_function_links_with_its_declared_type() {
    let rt = rt();
    let mut imports = String::new();
    for name in ic0::NAMES {
        let (params, results) = ic0::signature(name).unwrap();
        let list = |v: &[wasmparser::ValType]| {
            v.iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        imports.push_str(&format!(
            "(import \"ic0\" \"{name}\" (func (param {}) (result {})))\n",
            list(params),
            list(results)
        ));
    }
    let c = code(&rt, &format!("(module {imports} (memory 1))"));
    install(&rt, &c);
}

#[test]
fn modules_that_cannot_run_here_are_refused_with_the_reason() {
    let rt = rt();
    let refused = |wat: &str| match rt.compile(&wat::parse_str(wat).unwrap()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted: {wat}"),
    };
    let cases = [
        (
            r#"(module (import "ic0" "call_new" (func (param i32))))"#,
            "imports ic0.call_new, which this replica does not provide",
        ),
        (r#"(module (import "env" "f" (func)))"#, "imports env.f"),
        (
            r#"(module (import "ic0" "msg_reply" (func (param i32))))"#,
            "ic0.msg_reply with type [i32] -> []; the system API's type is [] -> []",
        ),
        (
            r#"(module (import "env" "memory" (memory 1)))"#,
            "imports a memory",
        ),
        (
            r#"(module (func (export "canister_update a")) (func (export "canister_query a")))"#,
            "`a` is exported as both an update and a query method",
        ),
        (
            r#"(module (func (export "canister_update a") (param i32)))"#,
            "`canister_update a` is not a function of type [] -> []",
        ),
        (
            r#"(module (func (export "canister_heartbeat")))"#,
            "does not run heartbeats or timers",
        ),
        (
            r#"(module (func (export "__icos_memory")))"#,
            "a name this replica reserves",
        ),
    ];
    for (wat, why) in cases {
        let e = refused(wat);
        assert!(e.contains(why), "{wat}: {e}");
    }
    let bytes = |b: &[u8]| rt.compile(b).unwrap_err().to_string();
    assert!(bytes(b"\x00asm\x01\x00\x00\x00\x01\xff").contains("not a valid Wasm module"));
    assert!(bytes(b"hello").contains("not a valid Wasm module"));
    assert!(bytes(&[0x1f, 0x8b, 8, 0]).contains("gzip"));
    let huge = vec![0u8; MAX_MODULE_BYTES + 1];
    assert!(bytes(&huge).contains("more than"));
}
