;; Asks for 1000 pages (62.5 MiB) of imported memory at start.
(module (import "env" "memory" (memory 1000)))
