module realm.dev/realm

go 1.19
