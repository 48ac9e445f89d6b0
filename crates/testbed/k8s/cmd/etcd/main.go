// etcd v3.7, built from its own Go module as a test fixture of crates/testbed:
// the storage of the test control planes' kube-apiserver.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
