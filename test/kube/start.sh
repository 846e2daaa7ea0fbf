#!/usr/bin/env bash
# Starts etcd and a kube-apiserver on free 127.0.0.1 ports, with all their state,
# keys and logs in DIR, and waits until the apiserver is ready (about 3 s).
#
#   test/kube/start.sh DIR
#
# The binaries come from test/kube/build.sh (built on first use and cached), or
# from KUBE_BIN_DIR when set. On success DIR holds:
#   env              shell-sourceable KEY=VALUE lines (see write_env below)
#   kubeconfig       the admin user's kubeconfig, with the serving CA
#   ca.crt           the CA of the apiserver's serving certificate
#   sa.key, sa.pub   the service-account token signing key pair (ECDSA P-256)
#   tokens.csv       the static tokens: an admin in system:masters and
#                    meshca-noauth, a user with no groups and so no rights
#   *.log            the logs of etcd and kube-apiserver
# On failure it prints the end of the logs to stderr, stops what it started and
# exits non-zero. test/kube/stop.sh DIR stops the processes.
#
# When MESHCA_KUBE_OWNER_PID is set, a watchdog runs stop.sh as soon as that
# process is gone, so a test binary that dies without cleaning up (a panic, a
# test timeout) leaves nothing running.
#
# Facts that shaped the flags:
#   --endpoint-reconciler-type=none  with the default reconciler kube-apiserver
#       refuses to start on a loopback address (it would publish it as the
#       endpoint of the kubernetes Service); nothing here needs those endpoints.
#   No controller manager runs: no ServiceAccount is created by itself (not even
#   "default"), so create each one a pod uses; pods stay Pending since no kubelet
#   runs, which is enough to bind tokens to them.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$1"
dir="$(cd "$1" && pwd -P)"
# The env file is written without quoting, so keep its values plain.
if [[ ! "$dir" =~ ^[A-Za-z0-9._/+-]+$ ]]; then
  echo "start.sh: DIR must be a path of letters, digits and ._/+- only: $dir" >&2
  exit 2
fi
if [[ -e "$dir/env" ]]; then
  echo "start.sh: $dir/env exists: a cluster may already run there" >&2
  exit 2
fi

bin="${KUBE_BIN_DIR:-}"
if [[ -z "$bin" ]]; then
  bin="$("$here/build.sh")"
fi

sa_issuer="https://kubernetes.default.svc.cluster.local"
api_audiences="$sa_issuer"
service_cidr="10.96.0.0/12"

etcd_port=""
etcd_pid=""
apiserver_url=""
apiserver_pid=""
watchdog_pid=""
admin_token=""
noauth_token=""

# stop_started ends the processes this script started, if any.
stop_started() {
  local pid
  for pid in $watchdog_pid $apiserver_pid $etcd_pid; do
    kill "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  done
}

# fail prints its message and exits; on_exit then cleans up.
fail() {
  echo "start.sh: $*" >&2
  exit 1
}

# on_exit runs at every exit: unless the cluster came up, it prints the end of
# the logs and stops whatever had been started.
ready=""
on_exit() {
  [[ -z "$ready" ]] || return 0
  local log
  for log in "$dir/etcd.log" "$dir/kube-apiserver.log"; do
    if [[ -s "$log" ]]; then
      echo "--- last lines of $log" >&2
      tail -n 30 "$log" >&2
    fi
  done
  stop_started
}
trap on_exit EXIT
trap 'fail "interrupted"' INT TERM

# free_port VAR sets VAR to a TCP port that nothing listens on at the moment. It
# picks at random below the ephemeral range, so two clusters starting at once
# rarely meet, and never hands out the same port twice.
declare -A taken=()
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 12000))
    if [[ -z "${taken[$port]:-}" ]] && [[ -z "$(ss -Htln "sport = :$port")" ]]; then
      taken[$port]=1
      printf -v "$1" '%s' "$port"
      return
    fi
  done
}

# wait_for WHAT PID SECONDS CMD... polls CMD until it succeeds. It returns 1 when
# process PID exits first, and fails the script when time runs out.
wait_for() {
  local what="$1" pid="$2" seconds="$3"
  shift 3
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || return 1
    ((SECONDS < deadline)) || fail "$what not ready after ${seconds}s"
    sleep 0.2
  done
}

# A port found free can be taken by another program before the server binds it:
# a server that exits saying so is started again on other ports.
port_clash() {
  grep -q "address already in use" "$1"
}

# make_keys writes the serving CA and certificate, the service-account key pair
# and the static tokens into DIR.
make_keys() (
  cd "$dir"
  ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

  ec_key ca.key
  openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=meshca-test-kube-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt
  ec_key serving.key
  openssl req -new -key serving.key -subj "/CN=kube-apiserver" -out serving.csr
  printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc" >serving.ext
  openssl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
    -days 3650 -extfile serving.ext -out serving.crt 2>/dev/null
  rm -f serving.csr serving.ext ca.srl

  ec_key sa.key
  openssl pkey -in sa.key -pubout -out sa.pub

  # Fields: token, user name, user UID, groups.
  printf '%s\n' \
    "$admin_token,meshca-test-admin,meshca-test-admin,system:masters" \
    "$noauth_token,meshca-noauth,meshca-noauth" >tokens.csv
  chmod 0600 ca.key serving.key sa.key tokens.csv
)

start_etcd() {
  local peer_port
  for _ in 1 2 3; do
    free_port etcd_port
    free_port peer_port
    "$bin/etcd" \
      --name=meshca-test \
      --data-dir="$dir/etcd" \
      --listen-client-urls="http://127.0.0.1:$etcd_port" \
      --advertise-client-urls="http://127.0.0.1:$etcd_port" \
      --listen-peer-urls="http://127.0.0.1:$peer_port" \
      --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
      --initial-cluster="meshca-test=http://127.0.0.1:$peer_port" \
      --unsafe-no-fsync \
      --log-level=warn \
      </dev/null >"$dir/etcd.log" 2>&1 &
    etcd_pid=$!
    if wait_for etcd "$etcd_pid" 30 curl -fsS "http://127.0.0.1:$etcd_port/health"; then
      return
    fi
    port_clash "$dir/etcd.log" || fail "etcd exited before it was ready"
    rm -rf "$dir/etcd"
  done
  fail "etcd found no free port in 3 attempts"
}

start_apiserver() {
  local apiserver_port
  for _ in 1 2 3; do
    free_port apiserver_port
    apiserver_url="https://127.0.0.1:$apiserver_port"
    "$bin/kube-apiserver" \
      --etcd-servers="http://127.0.0.1:$etcd_port" \
      --bind-address=127.0.0.1 \
      --advertise-address=127.0.0.1 \
      --secure-port="$apiserver_port" \
      --tls-cert-file="$dir/serving.crt" \
      --tls-private-key-file="$dir/serving.key" \
      --endpoint-reconciler-type=none \
      --service-cluster-ip-range="$service_cidr" \
      --service-account-issuer="$sa_issuer" \
      --service-account-key-file="$dir/sa.pub" \
      --service-account-signing-key-file="$dir/sa.key" \
      --api-audiences="$api_audiences" \
      --token-auth-file="$dir/tokens.csv" \
      --anonymous-auth=false \
      --authorization-mode=RBAC \
      --profiling=false \
      </dev/null >"$dir/kube-apiserver.log" 2>&1 &
    apiserver_pid=$!
    if wait_for kube-apiserver "$apiserver_pid" 60 curl -fsS --cacert "$dir/ca.crt" \
      -H "Authorization: Bearer $admin_token" "$apiserver_url/readyz"; then
      return
    fi
    port_clash "$dir/kube-apiserver.log" || fail "kube-apiserver exited before it was ready"
  done
  fail "kube-apiserver found no free port in 3 attempts"
}

write_kubeconfig() {
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: meshca-test
  cluster:
    server: $apiserver_url
    certificate-authority-data: $(base64 -w0 <"$dir/ca.crt")
users:
- name: meshca-test-admin
  user:
    token: $admin_token
contexts:
- name: meshca-test
  context:
    cluster: meshca-test
    user: meshca-test-admin
current-context: meshca-test
EOF
  chmod 0600 "$dir/kubeconfig"
}

write_env() {
  cat >"$dir/env.tmp" <<EOF
KUBECONFIG=$dir/kubeconfig
KUBE_APISERVER_URL=$apiserver_url
KUBE_CA_FILE=$dir/ca.crt
KUBE_ADMIN_TOKEN=$admin_token
KUBE_NOAUTH_TOKEN=$noauth_token
KUBE_SA_SIGNING_KEY=$dir/sa.key
KUBE_SA_ISSUER=$sa_issuer
KUBE_API_AUDIENCES=$api_audiences
ETCD_PID=$etcd_pid
APISERVER_PID=$apiserver_pid
WATCHDOG_PID=$watchdog_pid
EOF
  chmod 0600 "$dir/env.tmp"
  mv "$dir/env.tmp" "$dir/env"
}

start_watchdog() {
  local owner="${MESHCA_KUBE_OWNER_PID:-}"
  [[ -n "$owner" ]] || return 0
  kill -0 "$owner" 2>/dev/null || fail "MESHCA_KUBE_OWNER_PID $owner is not running"
  # setsid: a signal to the owner's process group must not end the watchdog too.
  # The single quotes are meant: the watchdog's own bash expands its arguments.
  # shellcheck disable=SC2016
  setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" "$3"' \
    watchdog "$owner" "$here/stop.sh" "$dir" </dev/null >"$dir/watchdog.log" 2>&1 &
  watchdog_pid=$!
}

start=$SECONDS
admin_token="$(openssl rand -hex 24)"
noauth_token="$(openssl rand -hex 24)"
make_keys
start_etcd
start_apiserver
write_kubeconfig
start_watchdog
write_env
ready=yes
echo "start.sh: kube-apiserver ready at $apiserver_url in $((SECONDS - start))s" >&2
