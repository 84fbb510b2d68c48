module realm.dev/examples

go 1.19

require realm.dev/realm v0.0.0

replace realm.dev/realm => ../../bindings/go
