// etcd 3.5, built from the Go module proxy as a test peer: the migration
// tests restore snapshots that this etcd wrote (scripts/go-peers.sh builds
// it). It is etcd's own main, nothing added.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
