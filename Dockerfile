# meshca's image: meshca and meshctl, static, on a distroless base, run as nonroot
# (65532). Build from the repository root:
#
#   docker build --build-arg RUNTIME_IMAGE=<distroless static nonroot image> \
#     --build-arg VERSION=$(git describe --always --dirty) -t meshca:dev .
#
# RUNTIME_IMAGE is required: name the distroless "static" image, nonroot variant (Debian
# 12), from the registry you use or mirror.
# Not built by the test suite (no container runtime there); deploy/deploy_test.go
# checks the manifests that run it.

ARG RUNTIME_IMAGE

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static binaries: no cgo, so no libc is needed at run time. The context has no .git,
# so VERSION (a tag or a commit) is what `meshca version` reports.
ENV CGO_ENABLED=0
ARG VERSION=unknown
RUN flags="-s -w -X github.com/meshca/meshca/internal/buildinfo.version=${VERSION}" && \
	go build -trimpath -ldflags="$flags" -o /out/meshca ./cmd/meshca && \
	go build -trimpath -ldflags="$flags" -o /out/meshctl ./cmd/meshctl

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/meshca /out/meshctl /usr/local/bin/
USER 65532:65532
EXPOSE 15012 15014
ENTRYPOINT ["/usr/local/bin/meshca"]
CMD ["server"]
