// Command demo shows meshca end to end on one machine (make demo): a real
// kube-apiserver on loopback, meshca against it, the proxyless gRPC programs payments
// and orders getting their certificates and configuration only from meshca, the
// policy "only orders may charge" applied with meshctl, an allowed and a denied call,
// and a root rotation while orders keeps calling. It prints what happened, cleans up
// after itself and says where the logs are. Run it from the repository root.
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/meshca/internal/kubetest"
)

func main() {
	if err := run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

// chargePolicy is the policy the demo applies.
const chargePolicy = `apiVersion: meshca.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: payments-charge, namespace: payments}
spec:
  selector: {serviceAccount: payments}
  action: ALLOW
  rules:
  - from: [{serviceAccount: orders/orders}]
    to: [{methods: [POST], paths: [/payments.Payments/Charge]}]
`

// demo holds what the steps share.
type demo struct {
	out   io.Writer
	dir   string // logs and files
	bin   string // built programs
	kube  *kubetest.Cluster
	grpc  string // meshca's gRPC address
	procs []*exec.Cmd
}

func run(out io.Writer) (err error) {
	dir, err := os.MkdirTemp("", "meshca-demo-")
	if err != nil {
		return err
	}
	d := &demo{out: out, dir: dir, bin: filepath.Join(dir, "bin")}
	defer func() {
		d.cleanup(err == nil)
		if err == nil {
			fmt.Fprintf(out, "\nLogs: %s (binaries, keys and the apiserver's files "+
				"removed)\n", dir)
		} else {
			fmt.Fprintf(out, "\nLogs and files, kept to look at: %s\n", dir)
		}
	}()

	d.step("Building meshca, meshctl and the examples")
	for _, pkg := range []string{"cmd/meshca", "cmd/meshctl", "examples/payments",
		"examples/orders"} {
		if err := d.sh("go", "build", "-o", filepath.Join(d.bin, filepath.Base(pkg)),
			"./"+pkg); err != nil {
			return err
		}
	}

	d.step("Starting a kube-apiserver on loopback (the first run builds it: minutes)")
	if d.kube, err = kubetest.StartCluster(); err != nil {
		return err
	}
	fmt.Fprintf(out, "   apiserver %s, logs in %s\n", d.kube.URL, d.kube.Dir())

	d.step("Starting meshca against it")
	if err := d.startMeshca(); err != nil {
		return err
	}

	d.step("Creating namespaces orders and payments, their service accounts and pods")
	workloads := []struct{ ns, sa string }{
		{"payments", "payments"}, {"orders", "orders"}, {"orders", "other"},
	}
	for _, w := range workloads {
		if err := d.workload(w.ns, w.sa); err != nil {
			return err
		}
	}

	d.step("Starting payments, a proxyless gRPC server configured only by meshca")
	if _, err := d.start("payments", "payments", "payments"); err != nil {
		return err
	}
	if err := d.expect("orders", "Charge", "OK"); err != nil {
		return fmt.Errorf("before any policy: %w", err)
	}
	fmt.Fprintln(out, "   no policy yet: orders -> Charge: OK")

	d.step("Applying the policy: only orders may call POST /payments.Payments/Charge")
	policyFile := filepath.Join(dir, "payments-charge.yaml")
	if err := os.WriteFile(policyFile, []byte(chargePolicy), 0o644); err != nil {
		return err
	}
	if err := d.meshctl("policy", "apply", "-f", policyFile); err != nil {
		return err
	}
	applied := time.Now()
	if err := d.expect("other", "Charge", "PermissionDenied"); err != nil {
		return err
	}
	fmt.Fprintf(out, "   in effect %v after the apply\n",
		time.Since(applied).Round(time.Millisecond))

	d.step("Calls under the policy")
	for _, c := range []struct{ who, method, want, why string }{
		{"orders", "Charge", "OK", "allowed"},
		{"orders", "Refund", "PermissionDenied", "denied: not in the policy"},
		{"other", "Charge", "PermissionDenied", "denied: not orders"},
	} {
		if err := d.expect(c.who, c.method, c.want); err != nil {
			return err
		}
		fmt.Fprintf(out, "   %s -> %s: %s (%s)\n", c.who, c.method, c.want, c.why)
	}

	d.step("Rotating the root while orders keeps calling Charge")
	caller, err := d.start("orders", "orders", "orders-loop", "--loop")
	if err != nil {
		return err
	}
	time.Sleep(time.Second)
	for _, args := range [][]string{
		{"ca", "rotate", "prepare"},
		{"ca", "rotate", "activate", "--wait", "1m"},
	} {
		if err := d.meshctl(args...); err != nil {
			return err
		}
	}
	fmt.Fprintln(out, "   remove waits for the certificates of the old root to expire "+
		"(leaf TTL 20s)")
	if err := d.meshctl("ca", "rotate", "remove", "--wait", "2m"); err != nil {
		return fmt.Errorf("removing the old root: %w", err)
	}
	if err := d.meshctl("ca", "status"); err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	summary, err := d.stopCaller(caller)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "   %s\n", summary)

	d.step("Summary")
	fmt.Fprintln(out, "   identities: SPIFFE X.509-SVIDs for payments, orders and other, from "+
		"their pod-bound tokens (TokenReview)")
	fmt.Fprintln(out, "   policy: orders -> Charge allowed; orders -> Refund and other -> "+
		"Charge denied")
	fmt.Fprintf(out, "   rotation: prepare, activate, remove with orders calling: %s\n",
		summary)
	return nil
}

func (d *demo) step(msg string) { fmt.Fprintf(d.out, "\n==> %s\n", msg) }

// sh runs a command, its output to the demo's log.
func (d *demo) sh(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func (d *demo) startMeshca() error {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	d.grpc = lis.Addr().String()
	_ = lis.Close()
	logf, err := os.Create(filepath.Join(d.dir, "meshca.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(d.bin, "meshca"), "server",
		"--data-dir", filepath.Join(d.dir, "meshca-data"),
		"--grpc-addr", d.grpc, "--http-addr", "127.0.0.1:0",
		"--kubeconfig", d.kube.Kubeconfig, "--leaf-ttl", "20s")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	d.procs = append(d.procs, cmd)
	socket := filepath.Join(d.dir, "meshca-data", "admin.sock")
	deadline := time.Now().Add(30 * time.Second)
	for d.meshctlQuiet("ca", "status") != nil {
		if time.Now().After(deadline) {
			return errors.New("meshca did not become ready; see meshca.log")
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Fprintf(d.out, "   gRPC %s, admin socket %s, log meshca.log\n", d.grpc, socket)
	return d.meshctlQuiet("bundle", "export", "--out", filepath.Join(d.dir, "roots.pem"))
}

// workload creates a namespace, service account and pod, and writes a token for the
// pod (audience meshca) and meshca's roots where the example programs read them, as
// a projected volume and the meshca-root-cert ConfigMap would.
func (d *demo) workload(ns, sa string) error {
	ctx := context.Background()
	core := d.kube.Client.CoreV1()
	_, err := core.Namespaces().Create(ctx,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !strings.Contains(err.Error(), "already exists") {
		return err
	}
	if _, err := core.ServiceAccounts(ns).Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}},
		metav1.CreateOptions{}); err != nil {
		return err
	}
	noMount := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: sa + "-0"},
		Spec: corev1.PodSpec{ServiceAccountName: sa, AutomountServiceAccountToken: &noMount,
			Containers: []corev1.Container{{Name: "app", Image: sa}}},
	}
	if _, err := core.Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return err
	}
	seconds := int64(3600)
	tr, err := core.ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences: []string{"meshca"}, ExpirationSeconds: &seconds,
			BoundObjectRef: &authenticationv1.BoundObjectReference{
				Kind: "Pod", APIVersion: "v1", Name: pod.Name},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	wd := filepath.Join(d.dir, sa)
	if err := os.MkdirAll(wd, 0o700); err != nil {
		return err
	}
	roots, err := os.ReadFile(filepath.Join(d.dir, "roots.pem"))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(wd, "bundle.pem"), roots, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "   %s/%s: pod %s, token bound to it\n", ns, sa, pod.Name)
	return os.WriteFile(filepath.Join(wd, "token"), []byte(tr.Status.Token), 0o600)
}

// start runs an example program as the workload sa; its output goes to <log>.log.
func (d *demo) start(program, sa, log string, args ...string) (*exec.Cmd, error) {
	wd := filepath.Join(d.dir, sa)
	logf, err := os.Create(filepath.Join(d.dir, log+".log"))
	if err != nil {
		return nil, err
	}
	// A short file refresh: the demo's certificates live 20 s.
	args = append([]string{"--meshca", d.grpc, "--token-file", filepath.Join(wd, "token"),
		"--dir", wd, "--node-id", sa, "--refresh", "1s"}, args...)
	cmd := exec.Command(filepath.Join(d.bin, program), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d.procs = append(d.procs, cmd)
	return cmd, nil
}

// expect makes one call as sa (polling: a policy takes effect within moments) until
// it returns want.
func (d *demo) expect(sa, method, want string) error {
	wd := filepath.Join(d.dir, sa)
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.Command(filepath.Join(d.bin, "orders"), "--meshca", d.grpc,
			"--token-file", filepath.Join(wd, "token"), "--dir", wd, "--node-id", sa+"-call",
			"--refresh", "1s",
			"--name", sa, "--method", method).Output()
		got := strings.TrimSpace(string(out))
		if err == nil && strings.HasSuffix(got, ": "+want) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s -> %s: want %s, got %q (%v)", sa, method, want, got, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// meshctl runs meshctl against the demo's meshca, echoing the command and its output.
func (d *demo) meshctl(args ...string) error {
	fmt.Fprintf(d.out, "   $ meshctl %s\n", strings.Join(args, " "))
	cmd := d.meshctlCmd(args...)
	out, err := cmd.CombinedOutput()
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		fmt.Fprintf(d.out, "     %s\n", sc.Text())
	}
	if err != nil {
		return fmt.Errorf("meshctl %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

func (d *demo) meshctlQuiet(args ...string) error {
	out, err := d.meshctlCmd(args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (d *demo) meshctlCmd(args ...string) *exec.Cmd {
	socket := filepath.Join(d.dir, "meshca-data", "admin.sock")
	return exec.Command(filepath.Join(d.bin, "meshctl"),
		append([]string{"--admin-socket", socket}, args...)...)
}

// stopCaller interrupts the looping orders client and returns its summary line.
func (d *demo) stopCaller(cmd *exec.Cmd) (string, error) {
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return "", err
	}
	waitErr := cmd.Wait()
	data, err := os.ReadFile(filepath.Join(d.dir, "orders-loop.log"))
	if err != nil {
		return "", err
	}
	var last string
	for line := range strings.Lines(string(data)) {
		if strings.Contains(line, "calls,") {
			last = strings.TrimSpace(line)
		}
	}
	if waitErr != nil || last == "" {
		return "", fmt.Errorf("calls during the rotation failed: %q (%v)", last, waitErr)
	}
	return last, nil
}

// cleanup stops every process the demo started, by its PID, then the apiserver.
// After a success it also removes
// what only served the run (binaries, meshca's store and the workloads' keys, the
// apiserver's directory) and keeps the logs and the policy file; after a failure it
// keeps everything.
func (d *demo) cleanup(success bool) {
	for i := len(d.procs) - 1; i >= 0; i-- {
		p := d.procs[i]
		if p.ProcessState != nil {
			continue
		}
		_ = p.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = p.Process.Kill()
			<-done
		}
	}
	if d.kube != nil {
		if err := d.kube.Stop(!success); err != nil {
			fmt.Fprintln(os.Stderr, "demo: stopping the apiserver:", err)
		}
	}
	if !success {
		return
	}
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return
	}
	for _, e := range entries {
		if ext := filepath.Ext(e.Name()); ext == ".log" || ext == ".yaml" {
			continue
		}
		if err := os.RemoveAll(filepath.Join(d.dir, e.Name())); err != nil {
			fmt.Fprintln(os.Stderr, "demo:", err)
		}
	}
}
