#!/usr/bin/env bash
# npm run image:test: builds the container image (Dockerfile) and runs it for real with podman.
#
#  1. The README walkthrough against the container, with Consul beside it: a Consul dev agent and
#     two small HTTP backends on the host, the container on host networking, every port a free
#     loopback one. Then the HEALTHCHECK, a reload (no zombie left), `podman stop` (timed; exit 0,
#     SIGTERM reached Node through tini, no process of the container left), and a start on the same
#     volume that serves the route again with no API call (it lives in Consul KV).
#  2. The newcomer mode in a container of its own network namespace: no CONSUL_ADDRESS (the image's
#     own Consul), HAProxy on ports 80 and 443 as the unprivileged user with NET_BIND_SERVICE as the
#     only capability, the walkthrough run inside the container, then SIGINT.
#  3. Without NET_BIND_SERVICE (--cap-drop ALL), start-up stops and says which capability to add.
#
# Needs root (rootful podman; apt-get installs podman and mmdebstrap when missing). The base image
# localhost/bookworm is made once with mmdebstrap and kept; everything else this script creates
# (image, containers, volume, processes, temporary files) is removed when it ends, however it ends.
#
#   IMAGE_TEST_BASE=localhost/bookworm   the image to build FROM (any Debian bookworm)
#   IMAGE_TEST_CA=/etc/ssl/certs/ca-certificates.crt   CA bundle handed to npm in the build (secret `ca`)
#   IMAGE_TEST_IMAGE=localhost/x   test an image built before instead of building one (kept)
#
# Every check captures a tool's output first and then matches it: under pipefail a reader that
# exits early (grep's quiet mode, head) fails the pipeline by chance.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

export CONTAINERS_CONF=${CONTAINERS_CONF:-$root/scripts/image/containers.conf}
base=${IMAGE_TEST_BASE:-localhost/bookworm}
ca=${IMAGE_TEST_CA:-/etc/ssl/certs/ca-certificates.crt}
tag=dfp-image-test-$$
image=localhost/$tag
ctr1=$tag-consul-beside
ctr2=$tag-newcomer
ctr3=$tag-no-caps
volume=$tag-state
tmp=$(mktemp -d)
passed=0
pids=()

say() { printf 'image-test: %s\n' "$*" >&2; }
ok() {
  passed=$((passed + 1))
  printf 'ok %d - %s\n' "$passed" "$*"
}
fail() {
  printf 'not ok %d - %s\n' "$((passed + 1))" "$*"
  for c in "$ctr1" "$ctr2"; do
    local logs
    if logs=$(podman logs "$c" 2>&1); then printf -- '--- logs of %s (last 30 lines)\n%s\n' "$c" "$(tail -n 30 <<<"$logs")" >&2; fi
  done
  printf '%d passed, 1 failed\n' "$passed"
  exit 1
}
ms_now() { echo $(($(date +%s%N) / 1000000)); }

# Removes what this run made: containers with their anonymous volumes, the named volume, the
# image (unless IMAGE_TEST_IMAGE named it), the processes on the host, the temporary files.
teardown() {
  local c pid
  for c in "$ctr1" "$ctr2" "$ctr3"; do podman rm -f -v -t 0 "$c" >/dev/null 2>&1 || true; done
  podman volume rm -f "$volume" >/dev/null 2>&1 || true
  if [[ -z ${IMAGE_TEST_IMAGE:-} ]]; then podman rmi -f "$image" >/dev/null 2>&1 || true; fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  pids=()
}
cleanup() {
  local status=$?
  set +e
  teardown
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools --------------------------------------------------------------------------------------
need=()
for tool in podman mmdebstrap runc curl python3; do command -v "$tool" >/dev/null || need+=("$tool"); done
if ((${#need[@]})); then
  [[ $(id -u) -eq 0 ]] || { say "needs root and: ${need[*]}"; exit 1; }
  say "installing podman, mmdebstrap and runc from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2 || true
  apt-get install -y -q --no-install-recommends podman buildah mmdebstrap runc uidmap netavark aardvark-dns curl python3 >&2
fi
bash scripts/setup.sh # the host's Consul (.tools/bin/consul) runs beside the container
consul_bin=${CONSUL_BIN:-$root/.tools/bin/consul}

# --- the base image -----------------------------------------------------------------------------
if podman image exists "$base"; then
  say "base image $base present"
elif [[ $base == localhost/bookworm ]]; then
  say "making $base with mmdebstrap (about a minute)"
  mmdebstrap --variant=minbase --format=tar --quiet bookworm "$tmp/rootfs.tar" >&2
  podman import --quiet "$tmp/rootfs.tar" "$base" >/dev/null
  rm -f "$tmp/rootfs.tar"
else
  say "base image $base is missing"
  exit 1
fi

# What exists before this run, to check at the end that it left nothing behind.
snapshot() { podman ps -a --format '{{.ID}}'; podman volume ls --quiet; podman images -a --quiet --no-trunc; }
before_run=$(snapshot | sort)

# --- build --------------------------------------------------------------------------------------
if [[ -n ${IMAGE_TEST_IMAGE:-} ]]; then
  # Iterating on this script: test an image built before, and leave it in place.
  image=$IMAGE_TEST_IMAGE
  podman image exists "$image" || { say "IMAGE_TEST_IMAGE=$image does not exist"; exit 1; }
  say "testing $image as it is (IMAGE_TEST_IMAGE): no build"
else
  images_before=$(podman images -a --quiet --no-trunc)
  secret=()
  [[ -f $ca ]] && secret=(--secret "id=ca,src=$ca")
  say "building $image FROM $base (several minutes here; the log is in the failure message)"
  start=$(ms_now)
  # --network=host: this machine's podman has no iptables for a build network. --layers=false: no
  # intermediate images stay behind. --format docker: OCI images would drop the HEALTHCHECK.
  if ! podman build --network=host --layers=false --format docker "${secret[@]}" \
    --build-arg "BASE=$base" -t "$image" . >"$tmp/build.log" 2>&1; then
    tail -n 40 "$tmp/build.log" >&2
    fail "podman build"
  fi
  build_ms=$(($(ms_now) - start))
  size=$(podman image inspect --format '{{.Size}}' "$image")
  base_size=$(podman image inspect --format '{{.Size}}' "$base")
  ok "image built in $((build_ms / 1000)) s: $((size / 1000000)) MB ($(((size - base_size) / 1000000)) MB above the $((base_size / 1000000)) MB base)"

  images_after=$(podman images -a --quiet --no-trunc)
  new_images=$(comm -13 <(sort <<<"$images_before") <(sort <<<"$images_after"))
  image_id=$(podman image inspect --format '{{.Id}}' "$image")
  [[ $new_images == "$image_id" || $new_images == "sha256:$image_id" ]] || fail "the build left images other than $image: $new_images"
  ok "the build left no intermediate image"
fi

config=$(podman image inspect --format '{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.ExposedPorts}} {{json .Config.Volumes}}' "$image")
[[ $config == 'dfp ["/usr/bin/tini","--"] '* ]] || fail "image runs as dfp under tini: $config"
[[ $config == *'"80/tcp"'* && $config == *'"443/tcp"'* && $config == *'"8080/tcp"'* && $config == *'"/var/lib/dfp"'* ]] || fail "ports 80, 443, 8080 and the volume: $config"
versions=$(podman run --rm --network=none --entrypoint sh "$image" -c 'node --version; haproxy -v; consul version; id -un' 2>"$tmp/podman.err")
[[ $versions =~ ^v20\. && $versions == *"HAProxy version 2.6."* && $versions == *"Consul v1.8.7"* && $versions == *$'\n'dfp ]] || fail "Node 20, HAProxy 2.6, Consul 1.8.7, user dfp: $versions"
ok "image: user dfp, tini as entrypoint, ports 80/443/8080, volume /var/lib/dfp, Node ${versions%%$'\n'*}, HAProxy 2.6, Consul 1.8.7"

# --- Consul and two backends beside the container ----------------------------------------------
# Free loopback ports, chosen by the kernel; the proxy and Consul take them a moment later.
read -r -a ports <<<"$(node -e '
  const net = require("node:net");
  const n = Number(process.argv[1]);
  const servers = [];
  const next = () => {
    if (servers.length === n) {
      console.log(servers.map((s) => s.address().port).join(" "));
      for (const s of servers) s.close();
      return;
    }
    const s = net.createServer().listen(0, "127.0.0.1", next);
    servers.push(s);
  };
  next();
' 8)"
api=${ports[0]} http=${ports[1]} https=${ports[2]} consul=${ports[3]} server=${ports[4]} serf=${ports[5]} b1=${ports[6]} b2=${ports[7]}

"$consul_bin" agent -dev -node "$tag" -bind 127.0.0.1 -client 127.0.0.1 -http-port "$consul" \
  -server-port "$server" -serf-lan-port "$serf" -serf-wan-port -1 -dns-port -1 -grpc-port -1 -log-level warn \
  >"$tmp/consul.log" 2>&1 &
pids+=($!)
for n in 1 2; do
  mkdir -p "$tmp/books$n/api/v1"
  printf '{"books":[],"instance":%d}' "$n" >"$tmp/books$n/api/v1/books"
done
port_of=([1]=$b1 [2]=$b2)
for n in 1 2; do
  python3 -m http.server "${port_of[$n]}" --bind 127.0.0.1 --directory "$tmp/books$n" >"$tmp/books$n.log" 2>&1 &
  pids+=($!)
done
leader=""
for _ in $(seq 100); do
  leader=$(curl -fsS "http://127.0.0.1:$consul/v1/status/leader" 2>/dev/null) || leader=""
  [[ $leader == *127.0.0.1* ]] && break
  sleep 0.1
done
[[ $leader == *127.0.0.1* ]] || fail "Consul dev agent on 127.0.0.1:$consul has no leader: $(cat "$tmp/consul.log")"

register() { # register N: instance N of books-ms, the way Registrator registers it
  curl -fsS -X PUT "http://127.0.0.1:$consul/v1/agent/service/register" \
    -d "{\"ID\":\"host1:books-ms.$1:8080\",\"Name\":\"books-ms\",\"Port\":${port_of[$1]},\"Address\":\"127.0.0.1\",\"Check\":null}"
}
dfp() { curl -sS "http://127.0.0.1:$api/v1/docker-flow-proxy/$1"; }

# --- 1. the container, Consul beside it ---------------------------------------------------------
wait_ready() { # wait_ready: successfulinitreload answers 200 within 60 s
  local code=""
  for _ in $(seq 600); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$api/v1/docker-flow-proxy/successfulinitreload") || code=""
    [[ $code == 200 ]] && return 0
    sleep 0.1
  done
  return 1
}

podman run -d --name "$ctr1" --network=host -v "$volume:/var/lib/dfp" \
  -e "PORT=$api" -e IP=127.0.0.1 -e "DEFAULT_PORTS=$http,$https:ssl" -e "CONSUL_ADDRESS=http://127.0.0.1:$consul" \
  "$image" >/dev/null 2>"$tmp/podman.err" || fail "podman run: $(cat "$tmp/podman.err")"
start=$(ms_now)
wait_ready || fail "the proxy did not become ready"
ok "container ready (successfulinitreload 200) $(($(ms_now) - start)) ms after podman run"

health=$(podman healthcheck run "$ctr1" 2>"$tmp/podman.err") || fail "podman healthcheck run: $health $(cat "$tmp/podman.err")"
status=$(podman inspect --format '{{.State.Health.Status}}' "$ctr1")
[[ $status == healthy ]] || fail "health status after the image's HEALTHCHECK ran: $status"
ok "the image's HEALTHCHECK passes: $status"

top=$(podman top "$ctr1" pid user comm 2>"$tmp/podman.err")
[[ $top =~ $'\n'1\ +dfp\ +tini ]] || fail "tini is PID 1: $top"
others=$(grep -v -E '^PID|dfp' <<<"$top" || true)
[[ -z $others ]] || fail "every process runs as dfp: $others"
[[ $top == *" haproxy"* && $top == *" node"* ]] || fail "node and haproxy run: $top"
ok "tini is PID 1, node and HAProxy run as dfp"

register 1
answer=$(dfp "reconfigure?serviceName=books-ms&servicePath=/api/v1/books")
[[ $answer == *'"Status":"OK"'* ]] || fail "reconfigure: $answer"
body=$(curl -sS "http://127.0.0.1:$http/api/v1/books")
[[ $body == '{"books":[],"instance":1}' ]] || fail "GET /api/v1/books through the proxy: $body"
ok "walkthrough: reconfigure, then /api/v1/books through HAProxy in the container answers $body"
page=$(curl -sS "http://127.0.0.1:$api/ui/")
script=$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$api/ui/dashboard.js")
chart=$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$api/ui/uplot.min.js")
data=$(curl -sS "http://127.0.0.1:$api/ui/data")
[[ $page == *'<html'* && $script == 200 && $chart == 200 && $data == *books-ms* ]] || fail "the dashboard in the image: page ${page:0:80}, script $script, chart $chart, data ${data:0:200}"
ok "the dashboard is served from the image (/ui/, its script, uPlot, and its data naming books-ms)"

register 2
seen=""
for _ in $(seq 50); do
  cfg=$(dfp config)
  [[ $cfg == *"127.0.0.1:$b1"* && $cfg == *"127.0.0.1:$b2"* ]] && break
  sleep 0.1
done
[[ $cfg == *"127.0.0.1:$b1"* && $cfg == *"127.0.0.1:$b2"* ]] || fail "second instance in the config: $cfg"
for _ in 1 2 3 4 5 6; do seen+=$(curl -sS "http://127.0.0.1:$http/api/v1/books"); done
[[ $seen == *'"instance":1'* && $seen == *'"instance":2'* ]] || fail "both instances answer: $seen"
ok "scaled to two instances without a call: both answer"

procs() { podman top "$ctr1" pid ppid comm 2>/dev/null; }
before=$(procs)
answer=$(dfp reload)
[[ $answer == *'"Status":"OK"'* ]] || fail "reload: $answer"
after=""
# The old worker leaves once it has no connection: wait until only one worker is left.
for _ in $(seq 50); do
  after=$(procs)
  workers=$(grep -c -E ' haproxy$' <<<"$after" || true)
  [[ $workers == 2 && $after != "$before" ]] && break
  sleep 0.1
done
[[ $workers == 2 && $after != "$before" ]] || fail "after a reload one master and one new worker: before $before after $after"
hpids=$(podman top "$ctr1" hpid 2>/dev/null)
zombies=""
for p in $hpids; do
  [[ $p =~ ^[0-9]+$ && -r /proc/$p/stat ]] || continue
  stat=$(</proc/"$p"/stat)
  state=${stat##*) }
  [[ ${state%% *} == Z ]] && zombies+=" $p"
done
[[ -z $zombies ]] || fail "zombie processes in the container after a reload:$zombies"
ok "reload: a new HAProxy worker, the old one gone, no zombie"

answer=$(dfp "remove?serviceName=books-ms")
[[ $answer == *'"Status":"OK"'* ]] || fail "remove: $answer"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http/api/v1/books")
[[ $code == 503 ]] || fail "removed path answers 503, got $code"
answer=$(dfp "reconfigure?serviceName=books-ms&servicePath=/api/v1/books")
[[ $answer == *'"Status":"OK"'* ]] || fail "reconfigure again: $answer"
ok "remove: the path answers 503; configured again"

# podman stop sends SIGTERM to PID 1 (tini), which hands it to Node.
stop_and_check() { # stop_and_check LABEL: podman stop, timed; exit 0, SIGTERM logged, nothing left
  local hp hpids start elapsed code logs left=""
  hpids=$(podman top "$ctr1" hpid 2>/dev/null)
  start=$(ms_now)
  podman stop -t 10 "$ctr1" >/dev/null 2>"$tmp/podman.err"
  elapsed=$(($(ms_now) - start))
  code=$(podman inspect --format '{{.State.ExitCode}}' "$ctr1")
  logs=$(podman logs "$ctr1" 2>&1)
  [[ $code == 0 ]] || fail "$1: exit code after podman stop: $code"
  [[ $logs == *"SIGTERM: stopping HAProxy"* ]] || fail "$1: Node did not log SIGTERM"
  ((elapsed < 5000)) || fail "$1: podman stop took $elapsed ms (podman kills after 10 s)"
  for hp in $hpids; do [[ $hp =~ ^[0-9]+$ ]] && kill -0 "$hp" 2>/dev/null && left+=" $hp"; done
  [[ -z $left ]] || fail "$1: processes of the container still alive:$left"
  ok "$1: podman stop took $elapsed ms, exit code 0, Node logged SIGTERM, no process left"
}
stop_and_check "stop"

# Same volume, same Consul: the route comes back from Consul KV with no API call.
podman start "$ctr1" >/dev/null 2>"$tmp/podman.err" || fail "podman start: $(cat "$tmp/podman.err")"
wait_ready || fail "the restarted proxy did not become ready"
body=""
for _ in $(seq 50); do
  body=$(curl -sS "http://127.0.0.1:$http/api/v1/books" 2>/dev/null) || body=""
  [[ $body == '{"books":[],"instance":'* ]] && break
  sleep 0.1
done
[[ $body == '{"books":[],"instance":'* ]] || fail "after a restart the route is served again: $body"
ok "restarted on the same volume: the route is served again, restored from Consul KV"
stop_and_check "stop after the restart"

# --- 2. the newcomer mode: no CONSUL_ADDRESS, ports 80 and 443, a network namespace of its own ---
# With the one capability the image needs and no other.
podman run -d --name "$ctr2" --network=none --cap-drop ALL --cap-add NET_BIND_SERVICE "$image" >/dev/null 2>"$tmp/podman.err" ||
  fail "podman run: $(cat "$tmp/podman.err")"
health=""
for _ in $(seq 60); do
  health=$(podman healthcheck run "$ctr2" 2>/dev/null) && break
  health=""
  sleep 1
done
status=$(podman inspect --format '{{.State.Health.Status}}' "$ctr2")
[[ $status == healthy ]] || fail "newcomer mode: health status: $status"
ok "newcomer mode: healthy with the image's own Consul"

# The walkthrough inside the container: a backend, its registration, reconfigure, GET on port 80;
# then a certificate, after which HAProxy listens on 443 too (`443:ssl` binds once one exists).
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=books.example.com \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" >"$tmp/openssl.log" 2>&1 || fail "openssl: $(cat "$tmp/openssl.log")"
cat >"$tmp/walk.mjs" <<'JS'
import http from 'node:http';
import tls from 'node:tls';
const backend = http.createServer((req, res) => res.end(req.url === '/api/v1/books' ? '{"books":[]}' : 'other'));
await new Promise((resolve) => backend.listen(9001, '127.0.0.1', resolve));
const call = async (url, init) => {
  const res = await fetch(url, init);
  return `${res.status} ${await res.text()}`;
};
const out = {};
out.register = await call('http://127.0.0.1:8500/v1/agent/service/register', {
  method: 'PUT',
  body: JSON.stringify({ ID: 'host1:books-ms.1:8080', Name: 'books-ms', Port: 9001, Address: '127.0.0.1', Check: null }),
});
out.reconfigure = await call('http://127.0.0.1:8080/v1/docker-flow-proxy/reconfigure?serviceName=books-ms&servicePath=/api/v1/books');
out.books = await call('http://127.0.0.1/api/v1/books');
out.cert = await call('http://127.0.0.1:8080/v1/docker-flow-proxy/cert?certName=books.example.com', { method: 'PUT', body: process.env.PEM });
out.tls = await new Promise((resolve) => {
  const socket = tls.connect({ host: '127.0.0.1', port: 443, servername: 'books.example.com', rejectUnauthorized: false }, () => {
    resolve(`CN=${socket.getPeerCertificate().subject?.CN}`);
    socket.end();
  });
  socket.on('error', (err) => resolve(`error ${err.message}`));
});
console.log(JSON.stringify(out));
backend.close();
JS
pem=$(cat "$tmp/cert.pem" "$tmp/key.pem")
walk=$(podman exec -i -e "PEM=$pem" "$ctr2" node --input-type=module - <"$tmp/walk.mjs" 2>&1) || fail "newcomer walkthrough: $walk"
[[ $walk == *'"books":"200 {\"books\":[]}"'* ]] || fail "newcomer walkthrough on port 80: $walk"
[[ $walk == *'"tls":"CN=books.example.com"'* ]] || fail "newcomer mode: TLS on port 443 with the stored certificate: $walk"
tcp=$(podman exec "$ctr2" cat /proc/net/tcp 2>&1)
listens() { # listens HEXPORT: a listening socket (state 0A) on that local port, held by uid 10001
  local -a f
  while read -r -a f; do
    [[ ${f[1]:-} == *:$1 && ${f[3]:-} == 0A && ${f[7]:-} == 10001 ]] && return 0
  done <<<"$tcp"
  return 1
}
if ! { listens 0050 && listens 01BB; }; then fail "HAProxy (uid 10001) listens on 80 (0050) and 443 (01BB): $tcp"; fi
ok "newcomer mode: HAProxy as uid 10001 listens on 80 and 443; /api/v1/books on 80 answers {\"books\":[]}, 443 serves the stored certificate"

hpids=$(podman top "$ctr2" hpid 2>/dev/null)
start=$(ms_now)
podman kill --signal INT "$ctr2" >/dev/null
code=$(timeout 10 podman wait "$ctr2" 2>"$tmp/podman.err") || fail "SIGINT: the container did not exit within 10 s"
elapsed=$(($(ms_now) - start))
logs=$(podman logs "$ctr2" 2>&1)
[[ $code == 0 ]] || fail "SIGINT: exit code $code"
[[ $logs == *"SIGINT: stopping HAProxy and the local Consul"* ]] || fail "SIGINT: Node did not log it"
left=""
for hp in $hpids; do [[ $hp =~ ^[0-9]+$ ]] && kill -0 "$hp" 2>/dev/null && left+=" $hp"; done
[[ -z $left ]] || fail "SIGINT: processes of the container still alive:$left"
ok "newcomer mode: SIGINT stops HAProxy and the local Consul in $elapsed ms, exit code 0, no process left"

# --- 3. without NET_BIND_SERVICE the file capability keeps HAProxy from running at all -----------
code=0
out=$(timeout 60 podman run --name "$ctr3" --rm --network=none --cap-drop ALL -e DEFAULT_PORTS=8000 "$image" 2>&1) || code=$?
[[ $code == 1 && $out == *"cannot start: cannot execute haproxy (EPERM)"*"--cap-add NET_BIND_SERVICE"* ]] ||
  fail "--cap-drop ALL: exit code 1 and a start-up error naming NET_BIND_SERVICE, got $code: $out"
ok "--cap-drop ALL: start-up stops with exit code 1, naming NET_BIND_SERVICE"

# --- nothing left -------------------------------------------------------------------------------
host_pids=("${pids[@]}")
teardown
left=$(comm -13 <(printf '%s\n' "$before_run") <(snapshot | sort))
[[ -z $left ]] || fail "containers, volumes or images left after the run: $left"
for pid in "${host_pids[@]}"; do kill -0 "$pid" 2>/dev/null && fail "process $pid (Consul or a backend) still alive"; done
ok "nothing left: no container, volume, image or process of this run"

printf '%d passed, 0 failed\n' "$passed"
