;; The counter canister: `inc` (update) adds one and replies with the new value, `get`
;; (query) replies with it; both as Candid `(nat64)`. The value lives in the heap; across a
;; code upgrade it is carried in stable memory (pre_upgrade writes it, post_upgrade reads
;; it back). The value is also the canister's certified data, so a `read_state` of
;; /canister/<id>/certified_data shows it under the subnet's signature.
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "certified_data_set" (func $certify (param i32 i32)))
  (import "ic0" "stable64_size" (func $stable_size (result i64)))
  (import "ic0" "stable64_grow" (func $stable_grow (param i64) (result i64)))
  (import "ic0" "stable64_read" (func $stable_read (param i64 i64 i64)))
  (import "ic0" "stable64_write" (func $stable_write (param i64 i64 i64)))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (memory (export "memory") 1)
  ;; 0..8: the counter. 16..31: the reply, Candid "DIDL", no types, one nat64 (0x78), value.
  (data (i32.const 16) "DIDL\00\01\78")
  (data (i32.const 64) "stable memory could not grow")

  (func $reply_count
    (i64.store (i32.const 23) (i64.load (i32.const 0)))
    (call $append (i32.const 16) (i32.const 15))
    (call $reply))
  (func $certify_count (call $certify (i32.const 0) (i32.const 8)))

  (func (export "canister_init") (call $certify_count))
  (func (export "canister_update inc")
    (i64.store (i32.const 0) (i64.add (i64.load (i32.const 0)) (i64.const 1)))
    (call $certify_count)
    (call $reply_count))
  (func (export "canister_query get") (call $reply_count))
  (func (export "canister_pre_upgrade")
    (if (i64.eqz (call $stable_size))
      (then
        (if (i64.lt_s (call $stable_grow (i64.const 1)) (i64.const 0))
          (then (call $trap (i32.const 64) (i32.const 28))))))
    (call $stable_write (i64.const 0) (i64.const 0) (i64.const 8)))
  (func (export "canister_post_upgrade")
    (if (i64.ne (call $stable_size) (i64.const 0))
      (then (call $stable_read (i64.const 0) (i64.const 0) (i64.const 8))))
    (call $certify_count))
)
