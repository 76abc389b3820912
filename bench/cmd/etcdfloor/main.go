// Command etcdfloor is a bare etcd server (etcd's own etcdmain, the same
// etcd the coordinator embeds), the anchor of bench/rendezvous's memory
// row: what a store holding the same members costs by itself.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
