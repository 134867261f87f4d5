// Command etcd is the etcd server the cluster tests run, built from the
// go.etcd.io/etcd/server/v3 module (see scripts/build-k8s.sh).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
