#!/usr/bin/env bash
# Regenerates the Go code of meshca's protobuf APIs (api/meshcav1) with pinned tools:
# protoc from Debian's protobuf-compiler package and the Go plugins at the versions
# below, installed into .bin/. Run from anywhere: hack/genproto.sh
set -euo pipefail

PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.0

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! command -v protoc >/dev/null; then
	echo "protoc not found: apt-get install protobuf-compiler" >&2
	exit 1
fi

export GOBIN="$root/.bin"
go install "google.golang.org/protobuf/cmd/protoc-gen-go@${PROTOC_GEN_GO_VERSION}"
go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@${PROTOC_GEN_GO_GRPC_VERSION}"

PATH="$GOBIN:$PATH" protoc -I api/proto \
	--go_out=. --go_opt=module=github.com/meshca/meshca \
	--go-grpc_out=. --go-grpc_opt=module=github.com/meshca/meshca \
	api/proto/meshca/v1/*.proto
