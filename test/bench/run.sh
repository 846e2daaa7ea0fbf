#!/usr/bin/env bash
# Runs meshca's benchmarks and says, after each run, how busy the machine was: the
# cores the benchmark process used and the cores every other process used meanwhile
# (from /proc/stat). On a shared machine, compare runs only when "others" is near 0.
#
# Usage: test/bench/run.sh [-r RUNS] [-q] [TARGET...]
#
# -q waits before each run until the other processes have used less than 0.1 core
# for 5 s (at most 10 minutes, then it runs anyway and the report says so).
#
# Targets (default: ca api storm sds server):
#   ca      BenchmarkIssue beside BenchmarkCreateCertificate and the ECDSA rates (./ca)
#   api     the certificate API over gRPC beside CreateCertificate (./test/e2e)
#   storm   500 new pod tokens in 10 s and at once (./test/e2e)
#   sds     1,000 SDS streams: bundle push to ACK, heap per idle stream (./xds)
#   sds10k  the same with 10,000 streams (MESHCA_SDS_STREAMS=10000)
#   server  start-to-ready time and idle RSS of `meshca server`, with and without a
#           Kubernetes API (hack/measure-server.sh)
#
# Each target runs RUNS times (default 2). The api, storm and server targets start a
# real kube-apiserver (test/kube/build.sh builds it first if it is not cached); its
# CPU counts under "others".
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

runs=2
quiet=false
while getopts "r:q" opt; do
	case $opt in
	r) runs=$OPTARG ;;
	q) quiet=true ;;
	*) exit 2 ;;
	esac
done
shift $((OPTIND - 1))
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
	targets=(ca api storm sds server)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# busy_jiffies prints the CPU time (1/100 s) all processes have used since boot.
busy_jiffies() {
	awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}

# wait_quiet returns once the machine has been nearly idle for 5 s, if -q was given.
wait_quiet() {
	$quiet || return 0
	local start=$SECONDS before after
	while ((SECONDS - start < 600)); do
		before=$(busy_jiffies)
		sleep 5
		after=$(busy_jiffies)
		if ((after - before < 50)); then
			return 0
		fi
	done
	echo "# the machine stayed busy for 10 minutes; running anyway"
}

# measured LABEL DIR CMD...: runs CMD in DIR and reports its CPU and everyone else's.
measured() {
	local label=$1 dir=$2 before after wall own
	shift 2
	wait_quiet
	before=$(busy_jiffies)
	local TIMEFORMAT='%R %U %S'
	{ time (cd "$dir" && "$@" 2>&1); } 2>"$work/time"
	after=$(busy_jiffies)
	read -r wall user sys <"$work/time"
	own=$(echo "$user + $sys" | bc)
	awk -v l="$label" -v w="$wall" -v o="$own" -v b="$(((after - before)))" 'BEGIN {
		others = b / 100 - o; if (others < 0) others = 0
		printf "# %s: %.1f s, this benchmark %.2f cores, other processes %.2f cores\n",
			l, w, o / w, others / w }'
}

# gotest PKG REGEXP BENCHTIME [ENV...]: builds the package's test binary once, then
# runs the benchmarks RUNS times in the package directory.
gotest() {
	local pkg=$1 re=$2 benchtime=$3 bin
	shift 3
	bin="$work/$(basename "$pkg").test"
	[[ -x $bin ]] || go test -c -o "$bin" "./$pkg"
	for run in $(seq 1 "$runs"); do
		measured "$pkg $re run $run/$runs" "$root/$pkg" env "$@" "$bin" -test.run '^$' \
			-test.bench "$re" -test.benchtime "$benchtime" |
			grep -v '^\(goos\|goarch\|pkg\|cpu\|PASS\|ok\)'
	done
}

for target in "${targets[@]}"; do
	case $target in
	ca) gotest ca 'Issue|CreateCertificate|ECDSA' 3s ;;
	api)
		test/kube/build.sh >/dev/null
		gotest test/e2e 'CertificateAPI' 3s
		;;
	storm)
		test/kube/build.sh >/dev/null
		gotest test/e2e 'TokenStorm' 1x
		;;
	sds) gotest xds 'SDSBundlePush' 5x ;;
	sds10k) gotest xds 'SDSBundlePush' 5x MESHCA_SDS_STREAMS=10000 ;;
	server)
		for run in $(seq 1 "$runs"); do
			measured "server with Kubernetes run $run/$runs" "$root" hack/measure-server.sh -n 1
			measured "server without Kubernetes run $run/$runs" "$root" \
				hack/measure-server.sh -n 1 -K
		done
		;;
	*)
		echo "unknown target $target" >&2
		exit 2
		;;
	esac
done
