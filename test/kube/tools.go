//go:build tools

// Package tools pins the commands that test/kube/build.sh builds: the
// kube-apiserver and etcd that meshca's tests run on loopback.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
