#!/usr/bin/env bash
# bench/run.sh: the standard benchmark suite (`make bench`), ngx_http_collab_module side by
# side with nchan (Debian's libnginx-mod-nchan, Redis storage) on one Redis, in one run.
#
#   bench/run.sh              full suite: W1..W4, 3 runs each, medians -> docs/benchmarks.md
#   BENCH_QUICK=1 bench/run.sh  1 run each, 3 s workloads, short saturation search (~3 min)
#   bench/run.sh report       only rewrite the report from the results of the last suite
#
# Environment:
#   BENCH_QUICK=1          shortened suite
#   BENCH_RUNS=N           repetitions per workload and target (default 3, quick 1)
#   BENCH_WORKLOADS="W1 W2 W3 W4 W3w1"   subset to run (W3w1: W3 with worker_processes 1,
#                          collab only, first run only: does throughput grow with workers?
#                          W3c1 / W3c3: W3 against a Redis Cluster of 1 / 3 primaries, collab
#                          only, not in this default list: `make bench-cluster` (the last part
#                          of `make bench`) runs "W3 W3c1 W3c3" to compare them with one Redis,
#                          see docs/benchmarks.md "W3 on a Redis Cluster")
#   BENCH_TARGETS="collab nchan"    subset to run
#   BENCH_W3_SUBS=100      subscribers of the W3 searches (10 documents): 10 makes each delta
#                          cheaper for nginx and the generator, so Redis's share grows
#   BENCH_WORKERS=N        worker_processes of both nginx instances (default 2)
#   BENCH_PROFILE=0        skip the perf profile (default: on when perf works)
#   BENCH_QUIET_MAX=25     before each measurement, wait until other processes use at most
#                          this % of the CPUs (measured over 1 s) ...
#   BENCH_QUIET_WAIT=90    ... for at most this many seconds per measurement (quick: 5) ...
#   BENCH_QUIET_BUDGET=480 ... and this many seconds in all (quick: 20); the load seen is
#                          recorded with every run (bg_busy) and shown in the report
#   BENCH_OUT=dir          results, configs, logs (default bench/out)
#   BENCH_DOC=file         report (default docs/benchmarks.md; the plot goes next to it).
#                          Only the full suite (W1..W4, both targets) rewrites the default
#                          report; any other run writes OUT/benchmarks.md (+ .png) and changes
#                          only the section "W3 on a Redis Cluster" of the default report (and
#                          bench/cluster-notes.md) when it measured W3c1/W3c3, not in quick
#                          mode. With BENCH_DOC set, that file gets the whole report of any run
#                          (and bench/cluster-notes.md is left as it is)
#   BENCH_COLLAB_EXTRA / BENCH_NCHAN_EXTRA   directives added to the collab / nchan locations
#   BENCH_COLLAB_SERVER    added to collab's server block (default: a collab_metrics location,
#                          so that the counters are on as in production; "" for a module
#                          built before collab_metrics)
#   COLLAB_MODULE, NGINX_BIN, REDIS_SERVER   as for the tests
#
# Everything listens on 127.0.0.1; the load generator connects from 127.0.0.2.. (loopback).
# One redis-server (plus the nodes of a cluster during W3c1/W3c3) and at most one nginx run
# at a time; all of them are stopped on exit.

set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

QUICK=${BENCH_QUICK:-0}
[ "$QUICK" = 0 ] && QUICK=""
RUNS=${BENCH_RUNS:-$([ -n "$QUICK" ] && echo 1 || echo 3)}
WORKLOADS=${BENCH_WORKLOADS:-"W1 W2 W3 W4 W3w1"}
TARGETS=${BENCH_TARGETS:-"collab nchan"}
WORKERS=${BENCH_WORKERS:-2}
OUT=${BENCH_OUT:-$ROOT/bench/out}
DOC=${BENCH_DOC:-$ROOT/docs/benchmarks.md}
PLOT=${DOC%.md}.png
MODULE=${COLLAB_MODULE:-$ROOT/build/ngx_http_collab_module.so}
NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
NCHAN_MODULE=""
BENCH=$ROOT/bench/collab-bench
RESULTS=$OUT/results.jsonl
COLLAB_EXTRA=${BENCH_COLLAB_EXTRA:-}
NCHAN_EXTRA=${BENCH_NCHAN_EXTRA:-}
COLLAB_SERVER=${BENCH_COLLAB_SERVER-"location = /metrics { collab_metrics; }"}

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
fail() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------------------------------
# packages

ensure_packages() {
    local missing="" p
    for p in libnginx-mod-nchan gnuplot-nox redis-server nginx perl; do
        dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed \
            || missing="$missing $p"
    done
    # nginx-core/nginx: either is fine
    if [ -n "$missing" ]; then
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo=sudo
        log "installing:$missing"
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing \
            || { $sudo apt-get update && $sudo env DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y --no-install-recommends $missing; } \
            || fail "apt-get install$missing failed"
    fi
    NCHAN_MODULE=$(dpkg -L libnginx-mod-nchan 2>/dev/null | grep '/ngx_nchan_module\.so$' | head -n1)
    [ -n "$NCHAN_MODULE" ] && [ -f "$NCHAN_MODULE" ] || fail "ngx_nchan_module.so not found"
    [ -f "$MODULE" ] || fail "$MODULE not built (make build)"
    [ -x "$BENCH" ] || fail "$BENCH not built"
}

# the module is measured from a copy taken at the start: a rebuild of build/ during the suite
# (other work on the tree) must not change the module between runs
snapshot_module() {
    mkdir -p "$OUT"
    cp "$MODULE" "$OUT/ngx_http_collab_module.so" || fail "cannot copy $MODULE"
    MODULE_SRC=$MODULE
    MODULE=$OUT/ngx_http_collab_module.so
    MODULE_SHA=$(sha256sum "$MODULE" | cut -c1-12)
    MODULE_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [ -n "$(git -C "$ROOT" status --porcelain -- ngx_collab_module config 2>/dev/null | head -n1)" ]; then
        MODULE_REV="$MODULE_REV + uncommitted changes"
    fi
    log "module: $MODULE_SRC (commit $MODULE_REV, sha256 $MODULE_SHA...) copied to $MODULE"
}

# ------------------------------------------------------------------------------------------
# processes: everything started here is recorded and stopped by the trap

REDIS_PID=""
NGINX_PREFIX=""
NGINX_TARGET=""
PERF_PID=""

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local p i
    for i in $(seq 100); do
        p=$((20000 + RANDOM % 10000))
        port_busy "$p" || { echo "$p"; return 0; }
    done
    fail "no free port"
}

redis_cli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

start_redis() {
    REDIS_PORT=$(free_port)
    mkdir -p "$OUT/redis"
    "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$OUT/redis" --save '' \
        --appendonly no --protected-mode no --daemonize no --maxclients 10000 \
        --logfile "$OUT/redis/redis.log" </dev/null >/dev/null 2>&1 &
    REDIS_PID=$!
    local i
    for i in $(seq 100); do
        [ "$(redis_cli ping 2>/dev/null)" = PONG ] && { log "redis-server on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID)"; return 0; }
        kill -0 "$REDIS_PID" 2>/dev/null || break
        sleep 0.1
    done
    fail "redis-server did not start (see $OUT/redis/redis.log)"
}

stop_redis() {
    [ -n "$REDIS_PID" ] || return 0
    kill -TERM "$REDIS_PID" 2>/dev/null
    local i
    for i in $(seq 50); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$REDIS_PID" 2>/dev/null
    wait "$REDIS_PID" 2>/dev/null
    REDIS_PID=""
}

# a Redis Cluster of N primaries and no replicas (W3c1, W3c3), started for one search and
# stopped after it. Made by hand (CLUSTER ADDSLOTSRANGE + MEET): `redis-cli --cluster create`
# wants at least 3 primaries. Node i serves the slots [i * 16384 / N, (i + 1) * 16384 / N).
CLUSTER_PIDS=()
CLUSTER_PORTS=()

cluster_port() {  # a free port whose cluster bus port (+10000) is free too
    local p i
    for i in $(seq 100); do
        p=$((10000 + RANDOM % 10000))
        port_busy "$p" || port_busy $((p + 10000)) || { echo "$p"; return 0; }
    done
    fail "no free port pair for a cluster node"
}

cluster_ok() {  # every node: state ok, every slot served, every node known
    local p info
    for p in "${CLUSTER_PORTS[@]}"; do
        info=$(redis-cli -h 127.0.0.1 -p "$p" cluster info 2>/dev/null | tr -d '\r')
        [[ $info == *cluster_state:ok* && $info == *cluster_slots_ok:16384* \
           && $info == *"cluster_known_nodes:${#CLUSTER_PORTS[@]}"* ]] || return 1
    done
}

start_cluster() {  # $1 primaries
    local n=$1 i p dir
    stop_cluster
    for i in $(seq 0 $((n - 1))); do
        p=$(cluster_port)
        dir=$OUT/cluster$n/node$i
        rm -rf "$dir"; mkdir -p "$dir"
        "$REDIS_SERVER" --port "$p" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no \
            --protected-mode no --daemonize no --maxclients 10000 --cluster-enabled yes \
            --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
            --logfile "$dir/redis.log" </dev/null >/dev/null 2>&1 &
        CLUSTER_PIDS+=($!)
        CLUSTER_PORTS+=("$p")
    done
    for i in $(seq 0 $((n - 1))); do
        p=${CLUSTER_PORTS[$i]}
        local k
        for k in $(seq 100); do
            [ "$(redis-cli -h 127.0.0.1 -p "$p" ping 2>/dev/null)" = PONG ] && break
            kill -0 "${CLUSTER_PIDS[$i]}" 2>/dev/null || fail "cluster node $i did not start (see $OUT/cluster$n/node$i/redis.log)"
            sleep 0.1
        done
        redis-cli -h 127.0.0.1 -p "$p" cluster addslotsrange $((i * 16384 / n)) $(((i + 1) * 16384 / n - 1)) \
            | grep -qx OK || fail "CLUSTER ADDSLOTSRANGE on node $i failed"
        [ "$i" -gt 0 ] && { redis-cli -h 127.0.0.1 -p "${CLUSTER_PORTS[0]}" cluster meet 127.0.0.1 "$p" \
            | grep -qx OK || fail "CLUSTER MEET of node $i failed"; }
    done
    for i in $(seq 300); do
        cluster_ok && { log "redis cluster of $n primaries on ports ${CLUSTER_PORTS[*]} (pids ${CLUSTER_PIDS[*]})"; return 0; }
        sleep 0.1
    done
    fail "the cluster of $n primaries did not reach cluster_state:ok in 30 s"
}

stop_cluster() {
    local pid i
    for pid in "${CLUSTER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${CLUSTER_PIDS[@]}"; do
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    CLUSTER_PIDS=()
    CLUSTER_PORTS=()
}

# a document name prefix whose K documents (PREFIX-0 .. PREFIX-K-1, hash tag {DOC}: slot
# CRC16(DOC) mod 16384) spread over the N primaries as evenly as possible (10 over 3: 4, 3, 3)
# -> "PREFIX COUNTS", e.g. "w3c3a17 4,3,3"
balanced_prefix() {  # $1 base, $2 documents, $3 primaries
    perl -e '
        sub crc16 {
            my $c = 0;
            for my $b (unpack "C*", $_[0]) {
                $c ^= $b << 8;
                $c = $c & 0x8000 ? (($c << 1) ^ 0x1021) & 0xffff : ($c << 1) & 0xffff for 1 .. 8;
            }
            return $c;
        }
        my ($base, $k, $n) = @ARGV;
        for my $try (0 .. 99999) {
            my @c = (0) x $n;
            for my $d (0 .. $k - 1) {
                my $slot = crc16("$base$try-$d") % 16384;
                my $i = $n - 1;
                $i-- while $slot < int($i * 16384 / $n);
                $c[$i]++;
            }
            my @s = sort { $a <=> $b } @c;
            if ($s[-1] - $s[0] <= 1) { print "$base$try ", join(",", @c), "\n"; exit 0 }
        }
        exit 1' "$@"
}

# the documents of PREFIX that have keys on each node, e.g. "4,3,3": where they really landed
docs_per_node() {  # $1 prefix
    local p out=""
    for p in "${CLUSTER_PORTS[@]}"; do
        out="$out,$(redis-cli -h 127.0.0.1 -p "$p" --scan --pattern "collab:{$1-*" 2>/dev/null \
            | sed -n 's/^collab:{\([^}]*\)}.*/\1/p' | sort -u | wc -l)"
    done
    echo "${out#,}"
}

# the open-file limit for nginx and the generator: the hard limit (raising it needs
# CAP_SYS_RESOURCE); nginx workers get a little less than that
ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
WORKER_NOFILE=$(( NOFILE > 200000 ? 200000 : NOFILE ))
WORKER_CONN=$(( WORKER_NOFILE - 100 ))

write_conf() {  # $1 = collab|nchan, $2 = prefix dir, $3 = port
    local t=$1 dir=$2 port=$3
    mkdir -p "$dir/logs" "$dir/tmp"
    {
        if [ "$t" = collab ]; then echo "load_module $MODULE;"; else echo "load_module $NCHAN_MODULE;"; fi
        cat <<EOF
worker_processes $WORKERS;
worker_rlimit_nofile $WORKER_NOFILE;
error_log logs/error.log notice;
pid nginx.pid;
events {
    worker_connections $WORKER_CONN;
}
http {
    access_log off;
    client_body_temp_path tmp/client_body;
    proxy_temp_path       tmp/proxy;
    fastcgi_temp_path     tmp/fastcgi;
    uwsgi_temp_path       tmp/uwsgi;
    scgi_temp_path        tmp/scgi;
EOF
        if [ "$t" = collab ]; then
            cat <<EOF
    collab_redis $COLLAB_REDIS;
    server {
        listen 127.0.0.1:$port reuseport backlog=4096;
        location = /collab {
            collab;
            # the generator's publishers send hundreds of deltas/s each: no per-session limit
            collab_rate off;
            $COLLAB_EXTRA
        }
        $COLLAB_SERVER
    }
}
EOF
        else
            cat <<EOF
    upstream nchan_redis {
        nchan_redis_server redis://127.0.0.1:$REDIS_PORT;
    }
    server {
        listen 127.0.0.1:$port reuseport backlog=4096;
        # subscribers: WebSocket pub/sub endpoint, one channel per document
        location ~ ^/ps/([A-Za-z0-9_-]+)\$ {
            nchan_pubsub websocket;
            nchan_channel_id \$1;
            nchan_redis_pass nchan_redis;
            nchan_subscriber_first_message newest;
            # default 10: subscribers that fall behind under load lose messages; 1000 is
            # nchan's better configuration for this workload (closer to collab's full log)
            nchan_message_buffer_length 1000;
            $NCHAN_EXTRA
        }
        # publishers: WebSocket publisher endpoint on the same channels (a publisher on the
        # pub/sub location would also receive every message it sends)
        location ~ ^/pub/([A-Za-z0-9_-]+)\$ {
            nchan_publisher websocket;
            nchan_channel_id \$1;
            nchan_redis_pass nchan_redis;
            nchan_message_buffer_length 1000;
        }
    }
}
EOF
        fi
    } > "$dir/nginx.conf"
}

# what collab's nginx uses: one Redis (RUN_REDIS=single) or the cluster (cluster1, cluster3)
RUN_REDIS=single
collab_redis_arg() {
    local p seeds=""
    if [ "$RUN_REDIS" = single ]; then echo "127.0.0.1:$REDIS_PORT"; return; fi
    for p in "${CLUSTER_PORTS[@]}"; do seeds="$seeds,127.0.0.1:$p"; done
    echo "cluster:${seeds#,}"
}

# every worker logged a slot map that serves every slot (cluster only)
cluster_map_ready() {
    [ "$(grep -h 'of 16384 slots served' "$NGINX_PREFIX/logs/error.log" 2>/dev/null \
         | grep ': 16384 of 16384' | sed -n 's/.*\] \([0-9]*\)#.*/\1/p' | sort -u | wc -l)" -ge "$WORKERS" ]
}

start_nginx() {  # $1 = collab|nchan; sets NGINX_PORT, NGINX_PREFIX
    local t=$1
    NGINX_TARGET=$t
    NGINX_PREFIX=$OUT/$t
    [ "$t" = collab ] && [ "$RUN_REDIS" != single ] && NGINX_PREFIX=$OUT/$t-$RUN_REDIS
    COLLAB_REDIS=$(collab_redis_arg)
    NGINX_PORT=$(free_port)
    rm -rf "$NGINX_PREFIX"
    write_conf "$t" "$NGINX_PREFIX" "$NGINX_PORT"
    "$NGINX_BIN" -p "$NGINX_PREFIX/" -c nginx.conf -e logs/error.log \
        || fail "nginx ($t) did not start: $(tail -n 5 "$NGINX_PREFIX/logs/error.log")"
    local i
    for i in $(seq 100); do
        if [ -s "$NGINX_PREFIX/nginx.pid" ] && port_busy "$NGINX_PORT"; then
            if [ "$t" = collab ] && [ "$RUN_REDIS" != single ]; then
                for i in $(seq 300); do cluster_map_ready && break; sleep 0.1; done
                cluster_map_ready || log "nginx ($t): not every worker has the cluster's slot map after 30 s"
            fi
            # let the workers connect to Redis
            sleep 0.5
            return 0
        fi
        sleep 0.1
    done
    fail "nginx ($t) did not listen on $NGINX_PORT"
}

nginx_pid() { cat "$NGINX_PREFIX/nginx.pid" 2>/dev/null; }

stop_nginx() {
    [ -n "$NGINX_PREFIX" ] || return 0
    local pid
    pid=$(nginx_pid)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        local i
        for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { log "nginx $pid still running: KILL"; kill -KILL "$pid"; }
        # workers that outlived the master
        for i in $(seq 50); do pgrep -P "$pid" >/dev/null 2>&1 || break; sleep 0.1; done
    fi
    NGINX_PREFIX=""
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$PERF_PID" ] && kill -INT "$PERF_PID" 2>/dev/null
    [ -n "${BENCH_PID:-}" ] && kill -TERM "$BENCH_PID" 2>/dev/null
    stop_nginx
    stop_cluster
    stop_redis
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# error.log lines that show a module problem (crash, alert), counted per run
log_problems() {
    local f=$NGINX_PREFIX/logs/error.log
    [ -f "$f" ] || { echo 0; return; }
    grep -cE '\[(alert|emerg|crit)\]|exited on signal|core dumped|AddressSanitizer' "$f"
}

# ------------------------------------------------------------------------------------------
# a shared machine: wait (bounded) for the other processes to calm down before measuring

QUIET_MAX=${BENCH_QUIET_MAX:-25}
QUIET_WAIT=${BENCH_QUIET_WAIT:-$([ -n "$QUICK" ] && echo 5 || echo 90)}
QUIET_BUDGET=${BENCH_QUIET_BUDGET:-$([ -n "$QUICK" ] && echo 20 || echo 480)}
QUIET_SPENT=0
BG_BUSY=0

cpu_busy() {  # % of all CPUs busy over 1 s (our nginx is idle at that point)
    local c u n s i w q sq st t1 i1 t2 i2
    read -r c u n s i w q sq st _ < /proc/stat
    t1=$(( u + n + s + i + w + q + sq + st )); i1=$(( i + w ))
    sleep 1
    read -r c u n s i w q sq st _ < /proc/stat
    t2=$(( u + n + s + i + w + q + sq + st )); i2=$(( i + w ))
    [ $(( t2 - t1 )) -gt 0 ] || { echo 0; return; }
    echo $(( 100 * ( (t2 - t1) - (i2 - i1) ) / (t2 - t1) ))
}

wait_quiet() {
    local waited=0
    BG_BUSY=$(cpu_busy)
    while [ "$BG_BUSY" -gt "$QUIET_MAX" ] && [ $waited -lt "$QUIET_WAIT" ] && [ $QUIET_SPENT -lt "$QUIET_BUDGET" ]; do
        [ $waited -eq 0 ] && log "machine busy (${BG_BUSY}% CPU used by other processes): waiting for <= ${QUIET_MAX}%"
        BG_BUSY=$(cpu_busy)
        waited=$(( waited + 1 )); QUIET_SPENT=$(( QUIET_SPENT + 1 ))
    done
    [ "$BG_BUSY" -gt "$QUIET_MAX" ] && log "measuring on a busy machine (${BG_BUSY}% CPU used by others)"
}

# ------------------------------------------------------------------------------------------
# one measurement

SRC_BASE=2
BENCH_PREFIX=""   # document name prefix of the next run ("": the generator's random one)
run_bench() {  # $1 target, $2 workload, $3 run number, rest = generator arguments
    local t=$1 w=$2 r=$3
    shift 3
    local path_args
    if [ "$t" = collab ]; then path_args=(--mode collab --path /collab)
    else path_args=(--mode nchan --sub-path /ps/ --pub-path /pub/); fi
    # rotate the source addresses (127.0.0.2..) so that TIME_WAIT of one run does not
    # limit the next one
    local args=(--port "$NGINX_PORT" "${path_args[@]}" --pid-file "$NGINX_PREFIX/nginx.pid"
                --src-base "$SRC_BASE" --src-ips 4 --label "$w" "$@")
    [ -n "$BENCH_PREFIX" ] && args+=(--prefix "$BENCH_PREFIX")
    # the CPU of each Redis process while the generator publishes (and drains)
    local i
    if [ "$t" = collab ] && [ "$RUN_REDIS" != single ]; then
        for i in "${!CLUSTER_PIDS[@]}"; do args+=(--cpu "redis$i=${CLUSTER_PIDS[$i]}"); done
    else
        args+=(--cpu "redis=$REDIS_PID")
    fi
    SRC_BASE=$(( SRC_BASE + 4 )); [ $SRC_BASE -gt 240 ] && SRC_BASE=2
    local before after line
    before=$(log_problems)
    wait_quiet
    log "$t $w run $r: collab-bench ${args[*]}"
    "$BENCH" "${args[@]}" > "$OUT/last.txt" 2> "$OUT/last.err" &
    BENCH_PID=$!
    wait "$BENCH_PID"
    local rc=$?
    BENCH_PID=""
    sed 's/^/    /' "$OUT/last.txt" | grep -v '^    {' >&2
    after=$(log_problems)
    line=$(grep '^{' "$OUT/last.txt" | tail -n 1)
    if [ $rc -ne 0 ] || [ -z "$line" ]; then
        log "collab-bench failed (rc=$rc): $(tail -n 3 "$OUT/last.err")"
        line='{"failed":true}'
    fi
    local nlog=$(( after - before ))
    if [ $nlog -gt 0 ]; then
        log "nginx error.log: $nlog alert/crit/crash lines, e.g.:"
        grep -E '\[(alert|emerg|crit)\]|exited on signal|core dumped|AddressSanitizer' \
            "$NGINX_PREFIX/logs/error.log" | tail -n 3 | sed 's/^/    /' >&2
        grep -E '\[(alert|emerg|crit)\]|exited on signal|core dumped|AddressSanitizer' \
            "$NGINX_PREFIX/logs/error.log" | tail -n 20 >> "$OUT/problems-$t.log"
    fi
    local cmd="collab-bench ${args[*]}"
    cmd=${cmd//\"/\\\"}
    local redis=single dpn=""
    if [ "$t" = collab ] && [ "$RUN_REDIS" != single ]; then
        redis=$RUN_REDIS
        [ -n "$BENCH_PREFIX" ] && dpn=$(docs_per_node "$BENCH_PREFIX")
    fi
    LAST_JSON=$(printf '%s' "$line" | sed "s|^{|{\"target\":\"$t\",\"workload\":\"$w\",\"run\":$r,\"log_problems\":$nlog,\"bg_busy\":$BG_BUSY,\"workers\":$WORKERS,\"redis\":\"$redis\",\"docs_per_node\":\"$dpn\",\"cmd\":\"$cmd\",|")
    printf '%s\n' "$LAST_JSON" >> "$RESULTS"
}

jget() {  # $1 json, $2 key -> value
    printf '%s' "$1" | perl -MJSON::PP -e 'local $/; my $j = eval { decode_json(<STDIN>) } || {}; my $v = $j->{$ARGV[0]}; print defined $v ? (ref $v ? ($$v ? 1 : 0) : $v) : ""' "$2"
}

# ------------------------------------------------------------------------------------------
# workloads

if [ -n "$QUICK" ]; then D12=3; D3=3; HOLD=1; else D12=10; D3=5; HOLD=2; fi

workload_args() {  # $1 workload -> generator arguments
    case $1 in
        W1) echo "-S 1000 -K 100 -P 10 -R 200 -D $D12 -B 256" ;;
        W2) echo "-S 10000 -K 1000 -P 20 -R 1000 -D $D12 -B 256" ;;
        W4) echo "-S 10000 -K 1000 -P 0 -R 0 --hold $HOLD" ;;
    esac
}

run_simple() {  # $1 workload, $2 run
    local w=$1 r=$2 t
    for t in $TARGETS; do
        start_nginx "$t"
        # shellcheck disable=SC2046
        run_bench "$t" "$w" "$r" $(workload_args "$w")
        stop_nginx
        sleep 1
    done
}

# W3: 100 subscribers over 10 documents, 10 publishers; the highest paced rate with
# p99 <= 50 ms, no loss, no duplicates, no order violation, no connect failure (and, for
# collab, every delta acked): doubling from 1,000 deltas/s until a rate fails, then
# bisection. Reported: delivered deltas/s of the best passing rate.
w3_pass() {  # $1 json
    local j=$1
    [ "$(jget "$j" failed)" = 1 ] && return 1
    local p99 lost dups ov cf nacks sent acks t
    p99=$(jget "$j" p99_us); lost=$(jget "$j" lost); dups=$(jget "$j" dups)
    ov=$(jget "$j" order_violations); cf=$(jget "$j" connect_fail); nacks=$(jget "$j" nacks)
    sent=$(jget "$j" sent); acks=$(jget "$j" acks); t=$(jget "$j" mode)
    [ -n "$p99" ] || return 1
    [ "$p99" -le 50000 ] && [ "$lost" = 0 ] && [ "$dups" = 0 ] && [ "$ov" = 0 ] && [ "$cf" = 0 ] || return 1
    if [ "$t" = collab ]; then [ "$nacks" = 0 ] && [ "$acks" = "$sent" ] || return 1; fi
    return 0
}

# one attempt: on a cluster, fresh documents (as the random prefix gives with one Redis)
# named so that they spread evenly over the primaries; where they landed is recorded
W3_PROBE=W3-probe
W3_ATTEMPT=0
W3_SUBS=${BENCH_W3_SUBS:-100}
w3_run() {  # $1 target, $2 run, $3 rate
    BENCH_PREFIX=""
    if [ "$1" = collab ] && [ "$RUN_REDIS" != single ]; then
        local n=${#CLUSTER_PORTS[@]} bp
        W3_ATTEMPT=$(( W3_ATTEMPT + 1 ))
        bp=$(balanced_prefix "w3c${n}r$2a${W3_ATTEMPT}x" 10 "$n") || fail "no prefix spreads 10 documents over $n primaries"
        BENCH_PREFIX=${bp% *}
    fi
    run_bench "$1" "$W3_PROBE" "$2" -S "$W3_SUBS" -K 10 -P 10 -R "$3" -D "$D3" -B 256 --drain 3
    if [ -n "$BENCH_PREFIX" ] && [ "$(jget "$LAST_JSON" docs_per_node)" != "${bp#* }" ]; then
        log "W3 $1: documents $BENCH_PREFIX-0..9 expected on the primaries as ${bp#* }, found $(jget "$LAST_JSON" docs_per_node)"
    fi
    BENCH_PREFIX=""
}

# one step of the search; in the full suite a failed step is tried once more (a noise spike
# on the shared machine should not end the search), both attempts are recorded
w3_step() {  # $1 target, $2 run, $3 rate -> 0 = pass (LAST_JSON = the passing attempt)
    w3_run "$1" "$2" "$3"
    w3_pass "$LAST_JSON" && return 0
    [ -n "$QUICK" ] && return 1
    stop_nginx; sleep 1; start_nginx "$1"
    log "${W3_PROBE%-probe} $1: $3 deltas/s failed, trying it once more"
    w3_run "$1" "$2" "$3"
    w3_pass "$LAST_JSON"
}

run_w3() {  # $1 run [$2 label, default W3]
    local r=$1 label=${2:-W3} t rate lo hi best bestj steps maxsteps
    # the steps of a search on a cluster are told apart from W3's (W3w1's carry workers 1)
    W3_PROBE=W3-probe
    [ "$RUN_REDIS" != single ] && W3_PROBE=$label-probe
    if [ -n "$QUICK" ]; then maxsteps=2; else maxsteps=4; fi
    for t in $TARGETS; do
        start_nginx "$t"
        lo=0; hi=0; rate=1000; best=""
        # doubling
        while :; do
            if w3_step "$t" "$r" "$rate"; then
                lo=$rate; best=$LAST_JSON
                rate=$(( rate * 2 ))
                [ $rate -gt 512000 ] && break
            else
                hi=$rate; break
            fi
            # the server may be left unhealthy by an overload: restart between probes
            stop_nginx; sleep 1; start_nginx "$t"
        done
        # bisection
        steps=0
        while [ $hi -gt 0 ] && [ $steps -lt $maxsteps ] && [ $(( hi - lo )) -gt $(( hi / 20 )) ]; do
            stop_nginx; sleep 1; start_nginx "$t"
            rate=$(( (lo + hi) / 2 ))
            [ $lo -eq 0 ] && rate=$(( hi / 2 ))
            if w3_step "$t" "$r" "$rate"; then lo=$rate; best=$LAST_JSON; else hi=$rate; fi
            steps=$(( steps + 1 ))
        done
        stop_nginx
        if [ -n "$best" ]; then
            log "$label $t run $r: highest passing rate $lo deltas/s -> $(jget "$best" delivered_per_s) delivered/s"
            printf '%s\n' "$best" | sed "s/\"workload\":\"$W3_PROBE\"/\"workload\":\"$label\"/" >> "$RESULTS"
        else
            log "$label $t run $r: no rate passed"
            printf '{"target":"%s","workload":"%s","run":%s,"failed":true}\n' "$t" "$label" "$r" >> "$RESULTS"
        fi
        sleep 1
    done
}

# ------------------------------------------------------------------------------------------
# profile: perf on the nginx workers at a fixed W3-like load (not part of the figures)

PROFILE_RATE=${BENCH_PROFILE_RATE:-4000}
run_profile() {
    [ "${BENCH_PROFILE:-1}" = 1 ] || return 0
    command -v perf >/dev/null || { log "perf not installed: no profile"; return 0; }
    perf record -o /dev/null -q -- true >/dev/null 2>&1 || { log "perf does not work here: no profile"; return 0; }
    local t pids dur
    dur=$([ -n "$QUICK" ] && echo 3 || echo 6)
    for t in $TARGETS; do
        start_nginx "$t"
        pids=$(pgrep -d, -P "$(nginx_pid)")
        perf record -F 999 -g -p "$pids" -o "$OUT/perf-$t.data" -- sleep $(( dur + 1 )) \
            > "$OUT/perf-$t.out" 2>&1 &
        PERF_PID=$!
        run_bench "$t" profile 1 -S 100 -K 10 -P 10 -R "$PROFILE_RATE" -D "$dur" -B 256 --drain 3
        wait "$PERF_PID"; PERF_PID=""
        perf report -i "$OUT/perf-$t.data" --no-children -g none --sort dso,symbol --stdio 2>/dev/null \
            | grep -E '^ +[0-9]' | head -n 25 > "$OUT/profile-$t.txt"
        perf report -i "$OUT/perf-$t.data" --no-children -g none --sort dso --stdio 2>/dev/null \
            | grep -E '^ +[0-9]' | head -n 12 > "$OUT/profile-dso-$t.txt"
        stop_nginx
        sleep 1
    done
}

# ------------------------------------------------------------------------------------------

main() {
    ensure_packages
    snapshot_module
    mkdir -p "$OUT"
    rm -f "$RESULTS" "$OUT"/problems-*.log "$OUT"/profile-*.txt
    local t0=$SECONDS
    start_redis
    local r w
    for r in $(seq "$RUNS"); do
        for w in $WORKLOADS; do
            case $w in
                W3) run_w3 "$r" ;;
                W3w1)
                    if [ "$r" = 1 ] && [ "$WORKERS" != 1 ] && [[ " $TARGETS " == *" collab "* ]]; then
                        local saved_w=$WORKERS saved_t=$TARGETS
                        WORKERS=1; TARGETS=collab
                        run_w3 "$r" W3w1
                        WORKERS=$saved_w; TARGETS=$saved_t
                    fi ;;
                W3c1|W3c3)
                    if [[ " $TARGETS " == *" collab "* ]]; then
                        local saved_t=$TARGETS
                        TARGETS=collab
                        start_cluster "${w#W3c}"
                        RUN_REDIS=cluster${w#W3c}
                        run_w3 "$r" "$w"
                        RUN_REDIS=single
                        stop_cluster
                        TARGETS=$saved_t
                    fi ;;
                W1|W2|W4) run_simple "$w" "$r" ;;
                *) fail "unknown workload $w" ;;
            esac
        done
    done
    run_profile
    stop_redis
    log "measurements took $(( SECONDS - t0 )) s"
    local rargs=(--results "$RESULTS" --out "$OUT" --doc "$DOC" --plot "$PLOT"
        --quick "${QUICK:-0}" --runs "$RUNS" --workers "$WORKERS" --module "$MODULE_SRC"
        --module-rev "$MODULE_REV" --module-sha "$MODULE_SHA"
        --nchan "$NCHAN_MODULE" --nginx "$NGINX_BIN" --redis "$REDIS_SERVER"
        --seconds $(( SECONDS - t0 )) --workloads "$WORKLOADS")
    [ -n "${BENCH_DOC:-}" ] && rargs+=(--doc-explicit)
    printf '%q ' "${rargs[@]}" > "$OUT/report.args"
    report
}

report() {
    [ -s "$OUT/report.args" ] || fail "no results in $OUT (run the suite first)"
    eval "perl \"\$ROOT/bench/report.pl\" $(cat "$OUT/report.args")" || fail "report failed"
    log "report done"
}

case ${1:-} in
    report) report ;;
    "") main ;;
    *) fail "usage: bench/run.sh [report]" ;;
esac
