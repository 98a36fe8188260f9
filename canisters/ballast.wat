;; The ballast canister, for benchmarks that need a canister of a given size: each `grow`
;; (update) adds 64 MiB of stable memory, every 64 KiB page marked with its number so that
;; no two 1 MiB pieces of the state are alike, and replies with the stable memory's size
;; in pages (Candid nat64); `size` (update, a log entry that changes nothing) replies with
;; the size alone.
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "stable64_size" (func $stable_size (result i64)))
  (import "ic0" "stable64_grow" (func $stable_grow (param i64) (result i64)))
  (import "ic0" "stable64_write" (func $stable_write (param i64 i64 i64)))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (memory (export "memory") 1)
  ;; 0..8: a page's number. 16..31: the reply, Candid "DIDL", no types, one nat64 (0x78).
  (data (i32.const 16) "DIDL\00\01\78")
  (data (i32.const 64) "stable memory could not grow")

  (func (export "canister_update grow")
    (local $page i64)
    (local $end i64)
    (local.set $page (call $stable_grow (i64.const 1024)))
    (if (i64.lt_s (local.get $page) (i64.const 0))
      (then (call $trap (i32.const 64) (i32.const 28))))
    (local.set $end (i64.add (local.get $page) (i64.const 1024)))
    (block $done
      (loop $next
        (br_if $done (i64.ge_u (local.get $page) (local.get $end)))
        (i64.store (i32.const 0) (local.get $page))
        (call $stable_write
          (i64.mul (local.get $page) (i64.const 65536)) (i64.const 0) (i64.const 8))
        (local.set $page (i64.add (local.get $page) (i64.const 1)))
        (br $next)))
    (call $reply_size))
  (func (export "canister_update size") (call $reply_size))
  (func $reply_size
    (i64.store (i32.const 23) (call $stable_size))
    (call $append (i32.const 16) (i32.const 15))
    (call $reply))
)
