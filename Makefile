# meshca build and test entry points. `make test` is the whole suite, as CI runs it.
GO ?= go

.PHONY: build test lint unit kube bench genproto

build:
	$(GO) build -o bin/meshca ./cmd/meshca
	$(GO) build -o bin/meshctl ./cmd/meshctl

## test: formatting, vet, lint and every test (unit and end-to-end) under the race detector.
test: lint unit

lint:
	hack/lint.sh

## kube: build (or reuse from the cache) the kube-apiserver and etcd the tests start.
kube:
	test/kube/build.sh >/dev/null

unit: kube
	$(GO) test -race -count=1 -timeout 20m ./...

## bench: issuance benchmarks beside the standard library's CreateCertificate rate.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 3s ./ca/

genproto:
	hack/genproto.sh
