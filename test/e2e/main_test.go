// Package e2e holds meshca's end-to-end tests: a real meshca server, in process,
// against a real kube-apiserver on loopback and real gRPC clients.
package e2e

import (
	"testing"

	"github.com/meshca/meshca/internal/kubetest"
)

func TestMain(m *testing.M) { kubetest.Main(m) }
