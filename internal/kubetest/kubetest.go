// Package kubetest runs a real kube-apiserver (with its etcd) on loopback for the
// tests of one package, and offers the helpers those tests need: an admin client,
// a user with no rights, workloads (a namespace, a service account and a pod that
// no kubelet runs), tokens bound to pods, and tokens signed with the cluster's own
// service-account key.
//
// A package that uses it runs its tests through Main, and each test calls Start:
//
//	func TestMain(m *testing.M) { kubetest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		c := kubetest.Start(t)
//		ns := c.NewNamespace(t)
//		...
//	}
//
// The first Start builds the binaries if they are not cached yet
// (test/kube/build.sh) and starts the cluster (about 4 s); the tests of the
// package share it, so each test works in namespaces of its own. Main stops it
// when the tests are done. Should the test binary die first (a panic, a
// -timeout), a watchdog started with the cluster stops it.
//
// A cold build takes 7 to 12 minutes on 2 cores, more than go test's default
// timeout: run test/kube/build.sh before go test (CI must).
//
// What this cluster is not: no controller manager runs, so no ServiceAccount is
// created on its own (not even "default") and nothing is garbage-collected; no
// kubelet runs, so pods stay Pending. kube-apiserver caches a successful token
// review for about 10 s, refuses TokenRequests of less than 10 minutes, and
// allows about 60 s of leeway on a token's expiry.
package kubetest

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Cluster is a running kube-apiserver on loopback. It is shared by the tests of
// a package: do not change what its fields point to.
type Cluster struct {
	// URL is the apiserver's address, https://127.0.0.1:<port>.
	URL string
	// Kubeconfig is the path of a kubeconfig file for the admin user.
	Kubeconfig string
	// Client is a client of the admin user, a member of system:masters.
	Client kubernetes.Interface
	// Issuer is the issuer of service-account tokens (--service-account-issuer).
	Issuer string
	// Audiences are the audiences the apiserver accepts by default
	// (--api-audiences).
	Audiences []string
	// SigningKey is the private key that signs service-account tokens; see
	// SignToken.
	SigningKey crypto.Signer

	dir         string
	caPEM       []byte
	adminToken  string
	noauthToken string
	keyID       string
}

// shared is the cluster of this test binary, started by the first Start.
var shared struct {
	once    sync.Once
	cluster *Cluster
	err     error
	inMain  bool
}

// Main runs the tests of a package that uses Start, then stops the cluster if a
// test started one, and exits with the tests' code. Call it from TestMain. When
// a test failed, the cluster's directory (logs, keys, etcd data) is kept and its
// path printed; otherwise it is removed.
func Main(m *testing.M) {
	shared.inMain = true
	code := m.Run()
	if c := shared.cluster; c != nil {
		if err := c.stop(code == 0); err != nil {
			fmt.Fprintf(os.Stderr, "kubetest: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// Start returns the cluster of this test binary, building and starting it on
// first use. It fails the test when the cluster cannot be built or started
// (never skips it), and when TestMain does not run the tests through Main.
func Start(t testing.TB) *Cluster {
	t.Helper()
	if !shared.inMain {
		t.Fatal("kubetest: TestMain must run the tests with kubetest.Main(m)")
	}
	shared.once.Do(func() {
		shared.cluster, shared.err = start()
	})
	if shared.err != nil {
		t.Fatalf("kubetest: %v", shared.err)
	}
	return shared.cluster
}

// RESTConfig returns a new REST config of the admin user.
func (c *Cluster) RESTConfig() *rest.Config {
	return c.restConfig(c.adminToken)
}

// NoAuthRESTConfig returns a new REST config of meshca-noauth, an authenticated
// user in no group and bound to no role: the apiserver forbids it everything
// but discovery, including TokenReviews.
func (c *Cluster) NoAuthRESTConfig() *rest.Config {
	return c.restConfig(c.noauthToken)
}

func (c *Cluster) restConfig(token string) *rest.Config {
	return &rest.Config{
		Host:            c.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: bytes.Clone(c.caPEM)},
		// The default of 5 requests per second would slow the tests down.
		QPS:   1000,
		Burst: 1000,
	}
}

// start builds the binaries if needed and starts a cluster in a new temporary
// directory.
func start() (*Cluster, error) {
	scripts, err := findScripts()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "meshca-kube-")
	if err != nil {
		return nil, fmt.Errorf("create cluster directory: %w", err)
	}
	cmd := exec.Command(filepath.Join(scripts, "start.sh"), dir)
	cmd.Env = append(os.Environ(), "MESHCA_KUBE_OWNER_PID="+strconv.Itoa(os.Getpid()))
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("start kube-apiserver: %w\n%s", err, out)
	}
	c, err := load(dir)
	if err != nil {
		err = fmt.Errorf("load cluster from %s: %w", dir, err)
		if stopErr := stopScript(dir); stopErr != nil {
			err = errors.Join(err, stopErr)
		}
		return nil, err
	}
	return c, nil
}

// load reads what start.sh wrote into dir.
func load(dir string) (*Cluster, error) {
	env, err := readEnv(filepath.Join(dir, "env"))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(env["KUBE_CA_FILE"])
	if err != nil {
		return nil, fmt.Errorf("read CA: %w", err)
	}
	key, err := readSigningKey(env["KUBE_SA_SIGNING_KEY"])
	if err != nil {
		return nil, err
	}
	keyID, err := keyIDOf(key.Public())
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		URL:         env["KUBE_APISERVER_URL"],
		Kubeconfig:  env["KUBECONFIG"],
		Issuer:      env["KUBE_SA_ISSUER"],
		Audiences:   strings.Split(env["KUBE_API_AUDIENCES"], ","),
		SigningKey:  key,
		dir:         dir,
		caPEM:       caPEM,
		adminToken:  env["KUBE_ADMIN_TOKEN"],
		noauthToken: env["KUBE_NOAUTH_TOKEN"],
		keyID:       keyID,
	}
	c.Client, err = kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		return nil, fmt.Errorf("admin client: %w", err)
	}
	return c, nil
}

// readEnv parses the KEY=VALUE lines of start.sh's env file. It requires every
// key that load uses.
func readEnv(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read env: %w", err)
	}
	env := make(map[string]string)
	for line := range strings.Lines(string(data)) {
		key, value, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok {
			env[key] = value
		}
	}
	for _, key := range []string{
		"KUBECONFIG", "KUBE_APISERVER_URL", "KUBE_CA_FILE", "KUBE_ADMIN_TOKEN",
		"KUBE_NOAUTH_TOKEN", "KUBE_SA_SIGNING_KEY", "KUBE_SA_ISSUER", "KUBE_API_AUDIENCES",
	} {
		if env[key] == "" {
			return nil, fmt.Errorf("env file %s has no %s", path, key)
		}
	}
	return env, nil
}

// stop stops the cluster's processes and, when remove is set, deletes its
// directory; otherwise it prints where the directory is.
func (c *Cluster) stop(remove bool) error {
	if err := stopScript(c.dir); err != nil {
		return err
	}
	if !remove {
		fmt.Fprintf(os.Stderr, "kubetest: kube-apiserver logs kept in %s\n", c.dir)
		return nil
	}
	if err := os.RemoveAll(c.dir); err != nil {
		return fmt.Errorf("remove cluster directory: %w", err)
	}
	return nil
}

func stopScript(dir string) error {
	scripts, err := findScripts()
	if err != nil {
		return err
	}
	out, err := exec.Command(filepath.Join(scripts, "stop.sh"), dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("stop kube-apiserver: %w\n%s", err, out)
	}
	return nil
}

// findScripts returns the test/kube directory of the repository, found from the
// working directory up (go test runs a package's tests in its directory).
func findScripts() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find test/kube: %w", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		scripts := filepath.Join(dir, "test", "kube")
		if _, err := os.Stat(filepath.Join(scripts, "start.sh")); err == nil {
			return scripts, nil
		}
		if dir == filepath.Dir(dir) {
			return "", fmt.Errorf("no test/kube/start.sh in %s or above", wd)
		}
	}
}

// StartCluster builds the binaries if needed and starts a cluster for a program
// rather than a test (make demo). The cluster stops when the calling process exits,
// or with Stop.
func StartCluster() (*Cluster, error) { return start() }

// Stop ends the cluster's processes; with keep, its directory (logs, etcd data)
// stays, and its path is printed.
func (c *Cluster) Stop(keep bool) error { return c.stop(!keep) }

// Dir is the cluster's directory: its logs, keys and etcd data.
func (c *Cluster) Dir() string { return c.dir }
