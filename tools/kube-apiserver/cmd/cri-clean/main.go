// Command cri-clean stops and removes every pod sandbox (and so every container) of a CRI runtime:
// the teardown step of scripts/kube-cluster.sh. Sandboxes, their network namespaces, veths and
// mounts outlive the kubelet and containerd; removing them through the CRI makes the runtime run
// the CNI DEL and unmount, so nothing is left behind (`crictl rmp -fa` does the same; this avoids
// a second Go module for cri-tools).
//
//	cri-clean unix:///path/to/containerd.sock
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"go.opentelemetry.io/otel/trace/noop"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: cri-clean unix:///path/to/runtime.sock")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	svc, err := remote.NewRemoteRuntimeService(ctx, os.Args[1], 30*time.Second, noop.NewTracerProvider(), false)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cri-clean: connect to %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	pods, err := svc.ListPodSandbox(ctx, &runtimeapi.PodSandboxFilter{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "cri-clean: list pod sandboxes: %v\n", err)
		os.Exit(1)
	}
	failed := 0
	for _, p := range pods {
		name := p.Metadata.Namespace + "/" + p.Metadata.Name
		if err := svc.StopPodSandbox(ctx, p.Id); err != nil {
			fmt.Fprintf(os.Stderr, "cri-clean: stop %s: %v\n", name, err)
		}
		if err := svc.RemovePodSandbox(ctx, p.Id); err != nil {
			fmt.Fprintf(os.Stderr, "cri-clean: remove %s: %v\n", name, err)
			failed++
			continue
		}
		fmt.Printf("removed pod sandbox %s (%s)\n", name, p.Id[:12])
	}
	if failed > 0 {
		os.Exit(1)
	}
}
