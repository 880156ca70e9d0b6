// One of the Kubernetes binaries of the integration tier's single-node cluster (scripts/kube-cluster.sh),
// built from the same k8s.io/kubernetes module (and go.mod replace block) as the test API server:
// `go install k8s.io/kubernetes/cmd/...@v1.36.3` is refused because of those replace directives.
// This is upstream's cmd/kube-proxy/main.go unchanged.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

func main() {
	os.Exit(cli.Run(app.NewProxyCommand()))
}
