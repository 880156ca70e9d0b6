// Command pause is the pod sandbox ("pause") container's process for the integration tier's
// single-node cluster: no registry is reachable here, so the sandbox image is made locally
// (scripts/kube-cluster.sh: FROM scratch + this static binary). Like upstream's pause.c it sleeps
// until SIGINT/SIGTERM and, as PID 1 of the pod's PID namespace when that is shared, reaps
// orphaned children.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s == syscall.SIGCHLD {
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
