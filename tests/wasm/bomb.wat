;; Memory bombs: grow page by page until refused, or ask for 4 GiB at once.
(module
  (memory (export "memory") 1)
  (func (export "bomb") (result i32)
    (block $refused
      (loop $more
        (br_if $refused (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))
        (br $more)))
    (memory.size))
  (func (export "grow_all") (result i32) (memory.grow (i32.const 65535))))
