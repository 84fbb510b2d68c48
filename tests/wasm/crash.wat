;; Traps of the guest's own: unbounded recursion, unreachable, an out-of-bounds load.
(module
  (memory (export "memory") 1)
  (func $recurse (export "recurse") (call $recurse))
  (func (export "unreachable") unreachable)
  (func (export "oob_load") (result i32) (i32.load (i32.const 0x7fffffff))))
