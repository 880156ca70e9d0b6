// Command coredns is CoreDNS built with only the plugins a test cluster's DNS needs (the cluster
// DNS of scripts/cluster-dns.sh): the kubernetes plugin answers <service>.<namespace>.svc.<domain>
// and the pod and reverse names from the API server; cache, errors, log, health and ready are
// what a kube-dns Deployment's probes and logs use. No forward plugin: the test machine has no
// upstream resolver worth asking, so names outside the cluster domain are refused.
//
// It is CoreDNS used as a library (core/dnsserver + coremain), the documented way to build it
// with a chosen plugin set without editing plugin.cfg: a full `go install` of CoreDNS pulls every
// cloud SDK its plugins link.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The plugins in the order CoreDNS's plugin.cfg runs them (a Corefile's order does not matter).
var directives = []string{
	"ready",
	"health",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"kubernetes",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
