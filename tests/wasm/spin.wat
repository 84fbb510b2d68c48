;; A guest that never returns: fuel or the deadline must stop it.
(module
  (memory (export "memory") 1)
  (func (export "spin") (loop $forever (br $forever))))
