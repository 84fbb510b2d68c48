;; A guest that spends its life in host calls: wasm fuel barely moves, the deadline must stop it.
(module
  (import "realm" "now_us" (func $now_us (result i64)))
  (memory (export "memory") 1)
  (func (export "spin") (loop $forever (drop (call $now_us)) (br $forever))))
