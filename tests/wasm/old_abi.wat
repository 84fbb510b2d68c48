;; A guest built for ABI 0, importing a name this host does not provide (the test adds the
;; realm_abi custom section with version 0).
(module
  (import "realm" "forward_layer_v0" (func (param i32 i32) (result i32)))
  (memory (export "memory") 1))
