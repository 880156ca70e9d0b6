// Command kube-apiserver runs a real Kubernetes API server for Nexus's integration tests: the
// upstream test server of k8s.io/kubernetes (cmd/kube-apiserver/app/testing.StartTestServer,
// the one Kubernetes' own integration tests use) on top of an embedded etcd 3.6
// (go.etcd.io/etcd/server/v3/embed), both on loopback only. It writes a kubeconfig for the
// server's superuser (system:masters) bearer token, prints one ready line on stdout and serves
// until SIGINT/SIGTERM.
//
//	kube-apiserver --kubeconfig PATH [--port N] [--data-dir DIR] [--node-ip IP] [-v N] [-- extra kube-apiserver flags]
//
// On its own only the API server runs: no controller manager, no scheduler, no kubelet. With
// --node-ip it is the API server of scripts/kube-cluster.sh's single-node cluster: it is also
// reachable on IP (a non-loopback address of this host) and through the "kubernetes" Service from
// pods, and the ServiceAccount admission plugin is on (pods get their token volume). See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"
	kubeapiservertesting "k8s.io/kubernetes/cmd/kube-apiserver/app/testing"
)

const readyPrefix = "kube-apiserver ready: "

// defaultServerFlags are passed to the test server before any user flags after "--" (for
// string-slice flags, a user value is appended to ours; for scalar flags the user's wins).
var defaultServerFlags = []string{
	"--bind-address=127.0.0.1",
	"--advertise-address=127.0.0.1",
	// Every request must carry the kubeconfig's token (the default would let anonymous
	// requests through, and authorization is AlwaysAllow).
	"--anonymous-auth=false",
}

// apiOnlyFlags are added when no controllers run (no --node-ip).
var apiOnlyFlags = []string{
	// The ServiceAccount admission plugin rejects pods in any namespace without a "default"
	// ServiceAccount, which only the (absent) service-account controller creates. Kubernetes'
	// own integration tests disable it the same way.
	"--disable-admission-plugins=ServiceAccount",
	// The "kubernetes" Service's endpoint would be 127.0.0.1, which Endpoints validation
	// rejects (an error logged every 10 s); nothing here needs that endpoint.
	"--endpoint-reconciler-type=none",
}

// serviceIP is the "kubernetes" Service's ClusterIP: the first address of the test server's
// service range (10.0.0.0/16, set by StartTestServer).
const serviceIP = "10.0.0.1"

func main() {
	os.Exit(run())
}

func run() int {
	// flag.CommandLine already holds klog's flags (-v, -vmodule, ...), registered by the test
	// server's dependencies; ours are added next to them.
	fs := flag.CommandLine
	kubeconfig := fs.String("kubeconfig", "", "write the kubeconfig to this path (required)")
	port := fs.Int("port", 0, "serve on 127.0.0.1:PORT (0 = the free port the test server picks)")
	dataDir := fs.String("data-dir", "", "directory for etcd data and the serving certificate (default: a temporary directory, removed on exit)")
	nodeIPFlag := fs.String("node-ip", "", "cluster mode: also serve on this (non-loopback) address of the host, advertise it as the \"kubernetes\" Service's endpoint and enable the ServiceAccount admission plugin")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: %s --kubeconfig PATH [--port N] [--data-dir DIR] [--node-ip IP] [-v N] [-- kube-apiserver flags]\n", os.Args[0])
		fs.PrintDefaults()
	}
	fs.Parse(os.Args[1:])
	if *kubeconfig == "" {
		fmt.Fprintln(os.Stderr, "kube-apiserver: --kubeconfig is required")
		fs.Usage()
		return 2
	}
	if *port < 0 || *port > 65535 {
		fmt.Fprintf(os.Stderr, "kube-apiserver: --port %d is not a port number\n", *port)
		return 2
	}
	var nodeIP net.IP
	if *nodeIPFlag != "" {
		if nodeIP = net.ParseIP(*nodeIPFlag); nodeIP == nil || nodeIP.To4() == nil || nodeIP.IsLoopback() || nodeIP.IsUnspecified() {
			fmt.Fprintf(os.Stderr, "kube-apiserver: --node-ip %q is not a non-loopback IPv4 address\n", *nodeIPFlag)
			return 2
		}
	}
	kubeconfigPath, err := filepath.Abs(*kubeconfig)
	if err != nil {
		return fail("%v", err)
	}

	t := newLogger()
	defer t.runCleanups()

	// A fixed port: take it first (so a port in use fails before anything starts).
	var fixed net.Listener
	if *port != 0 {
		if fixed, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(*port))); err != nil {
			return fail("listen on 127.0.0.1:%d: %v", *port, err)
		}
		defer fixed.Close()
	}

	dir := *dataDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "nexus-kube-apiserver-"); err != nil {
			return fail("%v", err)
		}
		defer os.RemoveAll(dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fail("%v", err)
	}

	sigCtx, stopSignals := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stopSignals()

	// ---- etcd ---------------------------------------------------------------------------------
	t0 := time.Now()
	etcd, etcdURL, etcdLogLevel, err := startEtcd(filepath.Join(dir, "etcd"))
	if err != nil {
		return fail("start etcd: %v", err)
	}
	defer func() {
		// Close makes etcd log each listener it stops as an error: expected, not worth showing.
		etcdLogLevel.SetLevel(zapcore.FatalLevel)
		etcd.Close()
	}()
	t.Logf("etcd %s ready on %s in %s", etcdVersion(), etcdURL, time.Since(t0).Round(time.Millisecond))

	// ---- kube-apiserver -----------------------------------------------------------------------
	// A fresh serving certificate (self-signed CA + cert for 127.0.0.1 and localhost). Without
	// one the test server loads a fixed test key pair from its source tree (the module cache),
	// which would tie the binary to the machine it was built on.
	// In cluster mode it is also valid for the node IP and, for pods, the Service's ClusterIP and
	// DNS names.
	sanIPs := []net.IP{net.ParseIP("127.0.0.1")}
	sanNames := []string{"localhost"}
	if nodeIP != nil {
		sanIPs = append(sanIPs, nodeIP, net.ParseIP(serviceIP))
		sanNames = append(sanNames, "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
	}
	certPEM, keyPEM, err := certutil.GenerateSelfSignedCertKey("127.0.0.1", sanIPs, sanNames)
	if err != nil {
		return fail("generate serving certificate: %v", err)
	}
	// It goes in via --cert-dir as <dir>/apiserver.{crt,key} rather than --tls-cert-file: the
	// test server also uses <cert-dir>/apiserver.crt as the CA of its peer proxy
	// (UnknownVersionInteroperabilityProxy), and fails to start if that file is missing.
	certDir := filepath.Join(dir, "certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return fail("%v", err)
	}
	if err := os.WriteFile(filepath.Join(certDir, "apiserver.crt"), certPEM, 0o644); err != nil {
		return fail("%v", err)
	}
	if err := os.WriteFile(filepath.Join(certDir, "apiserver.key"), keyPEM, 0o600); err != nil {
		return fail("%v", err)
	}
	serverFlags := append(append([]string{}, defaultServerFlags...), "--cert-dir="+certDir)
	if nodeIP == nil {
		serverFlags = append(serverFlags, apiOnlyFlags...)
	} else {
		// The endpoint reconciler publishes <node IP>:<the server's port> as the "kubernetes"
		// Service's endpoint; the relay below serves that address. kubectl logs/exec reach the
		// kubelet on its InternalIP (the node name does not resolve).
		serverFlags = append(serverFlags, "--advertise-address="+nodeIP.String(),
			"--kubelet-preferred-address-types=InternalIP")
	}
	serverFlags = append(serverFlags, fs.Args()...)

	storage := storagebackend.NewDefaultConfig("/registry", nil)
	storage.Transport.ServerList = []string{etcdURL}

	t1 := time.Now()
	server, err := kubeapiservertesting.StartTestServer(t, kubeapiservertesting.NewDefaultTestServerOptions(), serverFlags, storage)
	if err != nil {
		return fail("start kube-apiserver: %v", err)
	}
	cfg := server.ClientConfig
	t.Logf("kube-apiserver %s ready on %s in %s", kubeVersion(), cfg.Host, time.Since(t1).Round(time.Millisecond))
	if cfg.BearerToken == "" {
		server.TearDownFn()
		return fail("the test server's client config has no bearer token")
	}

	if nodeIP != nil {
		// The test server listens on 127.0.0.1 only (it makes its own listener); pods reach it on
		// the node IP, same port, relayed at the TCP level (TLS end to end).
		u, err := url.Parse(cfg.Host)
		if err != nil {
			server.TearDownFn()
			return fail("parse %q: %v", cfg.Host, err)
		}
		l, err := net.Listen("tcp", net.JoinHostPort(nodeIP.String(), u.Port()))
		if err != nil {
			server.TearDownFn()
			return fail("listen on %s:%s: %v (is %s an address of this host?)", nodeIP, u.Port(), err, nodeIP)
		}
		defer l.Close()
		go relay(l, u.Host, t)
		t.Logf("also serving on https://%s (the \"kubernetes\" Service's endpoint)", l.Addr())
	}

	serverURL := cfg.Host
	if fixed != nil {
		u, err := url.Parse(cfg.Host)
		if err != nil {
			server.TearDownFn()
			return fail("parse %q: %v", cfg.Host, err)
		}
		// The test server always listens on a port of its own choosing; relay the requested
		// port to it at the TCP level (TLS is end to end, the certificate is valid for both).
		go relay(fixed, u.Host, t)
		serverURL = "https://" + fixed.Addr().String()
	}

	if err := writeKubeconfig(kubeconfigPath, serverURL, certPEM, cfg.BearerToken); err != nil {
		server.TearDownFn()
		return fail("write kubeconfig: %v", err)
	}
	defer os.Remove(kubeconfigPath) // the token dies with the server
	fmt.Printf("%s%s kubeconfig=%s\n", readyPrefix, serverURL, kubeconfigPath)

	// ---- serve until signalled (or etcd dies) -------------------------------------------------
	code := 0
	select {
	case <-sigCtx.Done():
		t.Logf("signal received, shutting down")
	case err := <-etcd.Err():
		t.Errorf("etcd failed: %v", err)
		code = 1
	}
	stopSignals() // a second signal kills the process the default way

	done := make(chan struct{})
	go func() {
		server.TearDownFn()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Errorf("kube-apiserver did not shut down within 30s")
		return 1
	}
	t.Logf("kube-apiserver stopped")
	if t.Failed() && code == 0 {
		code = 1
	}
	return code
}

// startEtcd runs a single-member etcd on two free loopback ports, as Kubernetes' own
// k8s.io/apiserver/pkg/storage/etcd3/testserver does (fsync off: the data is throwaway).
func startEtcd(dir string) (*embed.Etcd, string, zap.AtomicLevel, error) {
	level := zap.NewAtomicLevelAt(zapcore.WarnLevel)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", level, err
	}
	ports, err := freePorts(2)
	if err != nil {
		return nil, "", level, err
	}
	clientURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))}
	peerURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))}

	cfg := embed.NewConfig()
	cfg.Name = "nexus-kube"
	cfg.Dir = dir
	cfg.UnsafeNoFsync = true
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ListenMetricsUrls = nil
	// embed.NewConfig leaves this 0 (only etcd's command line sets the default), which makes
	// etcd log every request as "expensive".
	cfg.WarningUnaryRequestDuration = embed.DefaultWarningUnaryRequestDuration
	// etcd logs at info level are very chatty: warnings and errors only, on stderr.
	zcfg := zap.NewProductionConfig()
	zcfg.Level = level
	zcfg.OutputPaths, zcfg.ErrorOutputPaths = []string{"stderr"}, []string{"stderr"}
	zcfg.Encoding = "console"
	zcfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	lg, err := zcfg.Build()
	if err != nil {
		return nil, "", level, err
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg.Named("etcd"))

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", level, err
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, "", level, err
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		e.Close()
		return nil, "", level, errors.New("etcd not ready after 60s")
	}
	return e, clientURL.String(), level, nil
}

func freePorts(n int) ([]int, error) {
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func writeKubeconfig(path, server string, caPEM []byte, token string) error {
	const name = "nexus-kube-test"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name, Namespace: "default"}
	cfg.CurrentContext = name
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	// Write then rename, so a reader never sees a half-written file.
	tmp := path + ".tmp"
	if err := clientcmd.WriteToFile(*cfg, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// relay forwards every connection accepted on l to target (a loopback address), byte for byte.
func relay(l net.Listener, target string, t *logger) {
	for {
		c, err := l.Accept()
		if err != nil {
			return // closed on exit
		}
		go func() {
			defer c.Close()
			u, err := net.DialTimeout("tcp", target, 10*time.Second)
			if err != nil {
				t.Logf("relay: dial %s: %v", target, err)
				return
			}
			defer u.Close()
			var wg sync.WaitGroup
			wg.Add(2)
			pipe := func(dst, src net.Conn) {
				defer wg.Done()
				io.Copy(dst, src)
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
				}
			}
			go pipe(u, c)
			go pipe(c, u)
			wg.Wait()
		}()
	}
}

func moduleVersion(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == path {
				return m.Version
			}
		}
	}
	return "(unknown)"
}

func kubeVersion() string { return moduleVersion("k8s.io/kubernetes") }
func etcdVersion() string { return moduleVersion("go.etcd.io/etcd/server/v3") }

func fail(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "kube-apiserver: error: "+format+"\n", args...)
	return 1
}

// logger is the test server's ktesting.TB outside of `go test`: logs go to stderr, cleanups
// run (last registered first) when run returns, and Fatal/FailNow/Skip exit the process
// (StartTestServer only calls them on unrecoverable setup errors).
type logger struct {
	mu       sync.Mutex
	failed   bool
	cleanups []func()
}

func newLogger() *logger { return &logger{} }

func (l *logger) out(s string) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05.000"), s)
}

func (l *logger) runCleanups() {
	for {
		l.mu.Lock()
		n := len(l.cleanups)
		if n == 0 {
			l.mu.Unlock()
			return
		}
		f := l.cleanups[n-1]
		l.cleanups = l.cleanups[:n-1]
		l.mu.Unlock()
		f()
	}
}

func (l *logger) Attr(key, value string) { l.out(fmt.Sprintf("attr %s=%s", key, value)) }
func (l *logger) Chdir(dir string) {
	if err := os.Chdir(dir); err != nil {
		l.Fatalf("chdir %s: %v", dir, err)
	}
}
func (l *logger) Cleanup(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cleanups = append(l.cleanups, f)
}
func (l *logger) Error(args ...any)                 { l.out(fmt.Sprint(args...)); l.Fail() }
func (l *logger) Errorf(format string, args ...any) { l.out(fmt.Sprintf(format, args...)); l.Fail() }
func (l *logger) Fail() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failed = true
}
func (l *logger) FailNow() {
	l.out("fatal error, exiting")
	os.Exit(1)
}
func (l *logger) Failed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failed
}
func (l *logger) Fatal(args ...any)                 { l.out(fmt.Sprint(args...)); l.FailNow() }
func (l *logger) Fatalf(format string, args ...any) { l.out(fmt.Sprintf(format, args...)); l.FailNow() }
func (l *logger) Helper()                           {}
func (l *logger) Log(args ...any)                   { l.out(fmt.Sprint(args...)) }
func (l *logger) Logf(format string, args ...any)   { l.out(fmt.Sprintf(format, args...)) }
func (l *logger) Name() string                      { return "nexus-kube-apiserver" }
func (l *logger) Setenv(key, value string) {
	if err := os.Setenv(key, value); err != nil {
		l.Fatalf("setenv %s: %v", key, err)
	}
}
func (l *logger) Skip(args ...any)                 { l.Fatal(append([]any{"skip: "}, args...)...) }
func (l *logger) Skipf(format string, args ...any) { l.Fatalf("skip: "+format, args...) }
func (l *logger) SkipNow()                         { l.Fatal("skip") }
func (l *logger) Skipped() bool                    { return false }
func (l *logger) TempDir() string {
	d, err := os.MkdirTemp("", "nexus-kube-apiserver-")
	if err != nil {
		l.Fatalf("TempDir: %v", err)
	}
	l.Cleanup(func() { os.RemoveAll(d) })
	return d
}
