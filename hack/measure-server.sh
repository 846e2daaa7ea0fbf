#!/usr/bin/env bash
# Measures `meshca server` start-to-ready time and idle memory: builds cmd/meshca,
# starts it on a new temporary data directory with loopback ports, polls /readyz
# until it answers 200, waits, reads the memory figures, and stops exactly the
# process it started. Each run does a first start (the root CA is generated) and a
# second start on the same directory (the root is loaded).
#
# Usage: hack/measure-server.sh [-n RUNS] [-i IDLE_SECONDS] [-K] [-- MESHCA_SERVER_FLAGS...]
#
# By default meshca is given a real kube-apiserver (test/kube/start.sh, built and
# cached by test/kube/build.sh, stopped again by test/kube/stop.sh), as in a cluster:
# /readyz then also waits for meshca's check of its own TokenReview rights. With -K
# there is no Kubernetes API, /readyz keeps saying that token authentication is not
# configured, and "ready" is the first answer of /readyz that is not "starting".
#
# ready_ms is measured from just before the exec to that answer, polled every 10 ms
# with curl, so its resolution is about 15 ms. startup is what meshca logs itself
# ("startup" of "meshca is ready": from Run to every listener bound, without process
# start and Go runtime start).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3
idle=5
kube=true
while getopts "n:i:K" opt; do
	case $opt in
	n) runs=$OPTARG ;;
	i) idle=$OPTARG ;;
	K) kube=false ;;
	*) exit 2 ;;
	esac
done
shift $((OPTIND - 1))
[[ ${1:-} == "--" ]] && shift
extra=("$@")
unset KUBECONFIG

work=$(mktemp -d)
pid=""
kube_dir=""
cleanup() {
	if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		wait "$pid" || true
	fi
	if [[ -n $kube_dir ]]; then
		test/kube/stop.sh "$kube_dir" >/dev/null
	fi
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/meshca" ./cmd/meshca
if $kube; then
	test/kube/build.sh >/dev/null
	kube_dir="$work/kube"
	MESHCA_KUBE_OWNER_PID=$$ test/kube/start.sh "$kube_dir" >/dev/null
	extra+=(--kubeconfig "$kube_dir/kubeconfig")
fi

# free_port prints a loopback TCP port that nothing listens on right now.
free_port() {
	local port
	while :; do
		port=$((20000 + RANDOM % 40000))
		if ! ss -ltnH "sport = :$port" | grep -q .; then
			echo "$port"
			return
		fi
	done
}

now_ns() { date +%s%N; }

# measure DATA_DIR LABEL: one start, measured, then a clean stop.
measure() {
	local dir=$1 label=$2 port log start ready_ms code mem startup
	port=$(free_port)
	log="$work/$label.log"
	start=$(now_ns)
	"$work/meshca" server --data-dir "$dir" --grpc-addr 127.0.0.1:0 \
		--http-addr "127.0.0.1:$port" "${extra[@]}" 2>"$log" &
	pid=$!
	while :; do
		code=$(curl -s -o "$work/readyz" -w '%{http_code}' --max-time 1 \
			"http://127.0.0.1:$port/readyz" || true)
		if [[ $code == 200 ]]; then
			break
		fi
		if ! $kube && [[ $code == 503 ]] && ! grep -q "starting" "$work/readyz"; then
			break
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "meshca exited before it was ready:" >&2
			cat "$log" >&2
			exit 1
		fi
		if (($(now_ns) - start > 30000000000)); then
			echo "meshca not ready after 30 s:" >&2
			cat "$log" >&2
			exit 1
		fi
		sleep 0.01
	done
	ready_ms=$((($(now_ns) - start) / 1000000))
	sleep "$idle"
	mem=$(awk '/^(VmRSS|RssAnon|RssFile|VmHWM):/ { v[$1] = sprintf("%.1f", $2 / 1024) }
		END { print v["VmRSS:"], v["RssAnon:"], v["RssFile:"], v["VmHWM:"] }' \
		"/proc/$pid/status")
	kill -TERM "$pid"
	wait "$pid"
	pid=""
	startup=$(grep -o 'startup=[0-9.]*[a-zµ]*s' "$log" | head -1 | cut -d= -f2)
	# shellcheck disable=SC2086 # mem is four numbers
	printf "$format" "$run" "$label" "$ready_ms" "${startup:-?}" $mem
}

format='%-4s %-7s %9s %9s %8s %9s %9s %9s\n'
# rss = anon (heap, stacks, runtime) + file (the binary's pages read so far); peak is VmHWM.
printf "$format" run start ready_ms startup rss_MiB anon_MiB file_MiB peak_MiB
for run in $(seq 1 "$runs"); do
	dir="$work/data-$run"
	measure "$dir" first
	measure "$dir" second
done
