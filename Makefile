# meshca build and test entry points. `make test` is the whole suite, as CI runs it.
GO ?= go

.PHONY: build test lint unit kube bench genproto demo

# -buildvcs=true: `meshca version` names the commit even where GOFLAGS turns it off.
build:
	$(GO) build -buildvcs=true -o bin/meshca ./cmd/meshca
	$(GO) build -buildvcs=true -o bin/meshctl ./cmd/meshctl

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

## docs: regenerate the reference pages built from the commands (docs/configuration.md,
## docs/meshctl.md); tests in cmd/meshca and cmd/meshctl fail while they are stale.
.PHONY: docs
docs:
	$(GO) run ./cmd/meshca docs config --out docs/configuration.md
	$(GO) run ./cmd/meshctl docs --out docs/meshctl.md

## bench (continued): the certificate API and a token storm against a real kube-apiserver,
## SDS pushes to 1,000 open streams, and `meshca server` start time and idle memory, each
## run twice with the machine's load reported (test/bench/run.sh, docs/performance.md).
bench: bench-more

.PHONY: bench-more
bench-more: kube
	test/bench/run.sh api storm sds server

# The whole story on one machine: a real kube-apiserver, meshca, two proxyless gRPC
# programs, a policy with an allowed and a denied call, a root rotation under load.
demo:
	go run ./examples/demo
