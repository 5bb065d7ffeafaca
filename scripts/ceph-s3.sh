#!/usr/bin/env bash
# A real single-node Ceph S3 server on loopback, for tests and local development.
#
#   scripts/ceph-s3.sh start DIR PORT   one monitor, one memstore OSD and radosgw on
#                                       127.0.0.1:PORT, all state in DIR; prints
#                                       `export AWS_...=...` lines (eval them) once S3 answers
#   scripts/ceph-s3.sh stop DIR         stops what `start DIR` started
#   scripts/ceph-s3.sh gateway-stop DIR        kills radosgw alone (an S3 outage; the data stays)
#   scripts/ceph-s3.sh gateway-start DIR PORT  starts it again on PORT and waits until S3 answers
#
# Needs the Debian packages radosgw, ceph-mon and ceph-osd. Auth is off and every pool has
# one replica: this is a throwaway server, never a deployment. Every path, port and socket
# comes from DIR/ceph.conf, so several instances (in other DIRs, on other ports) coexist
# with each other and with a system cluster in /etc/ceph.
set -euo pipefail

readonly ACCESS_KEY="loraplane-test-access-key"
readonly SECRET_KEY="loraplane-test-secret-key"
readonly START_TIMEOUT_S="${CEPH_S3_START_TIMEOUT_S:-120}"

usage() {
    echo "usage: $0 start DIR PORT | stop DIR | gateway-stop DIR | gateway-start DIR PORT" >&2
    exit 2
}

log() { echo "ceph-s3: $*" >&2; }

die() {
    log "$*"
    exit 1
}

free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Run a Ceph tool against this instance only.
ceph_in() { "$@" --conf "$DIR/ceph.conf"; }

# Start a daemon in the foreground of its own session and remember its pid for `stop`.
spawn() {
    local name=$1
    shift
    setsid "$@" --conf "$DIR/ceph.conf" -f >>"$DIR/log/$name.out" 2>&1 </dev/null &
    echo "$!" >"$DIR/run/$name.pid"
    disown  # `stop` owns its end; no "Killed" job notices from this shell
}

# Poll `$@` every 0.2 s until it succeeds; fail naming `what` when START_TIMEOUT_S passes or
# a daemon started so far has exited (a port in use, a bad option).
wait_for() {
    local what=$1
    shift
    local deadline=$((SECONDS + START_TIMEOUT_S)) pidfile
    while true; do
        for pidfile in "$DIR"/run/*.pid; do
            running "$(<"$pidfile")" || die "$(basename "$pidfile" .pid) exited; see $DIR/log"
        done
        "$@" >/dev/null 2>&1 && return
        ((SECONDS < deadline)) || die "$what did not come up within ${START_TIMEOUT_S}s; see $DIR/log"
        sleep 0.2
    done
}

# True while `pid` exists and is not a zombie (a container's init may never reap it).
running() { [[ -r "/proc/$1/status" ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# radosgw answers an anonymous GET / with an empty bucket list; anything else on PORT does not.
s3_answers() {
    /usr/bin/python3 - "$PORT" <<'EOF'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=2).read()
sys.exit(b"ListAllMyBucketsResult" not in body)
EOF
}

write_conf() {
    local fsid=$1 mon_port=$2
    cat >"$DIR/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
keyring = $DIR/keyring
run dir = $DIR/run
admin socket = $DIR/run/\$name.\$pid.asok
log file = $DIR/log/\$name.log
crash dir = $DIR/crash
mon allow pool size one = true
mon warn on pool no redundancy = false
# The monitor shuts itself down when its disk's free share falls to this percentage;
# a test server's few megabytes must not stop on a busy disk that still has room.
mon data avail crit = 0
mon max pg per osd = 1000
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0

[mon]
mon data = $DIR/mon.\$id

[osd]
osd data = $DIR/osd.\$id
osd objectstore = memstore
memstore device bytes = 2147483648

[client.rgw]
# radosgw defaults to a "secure" monitor connection, which auth none cannot provide.
ms mon client mode = crc
rgw frontends = beast endpoint=127.0.0.1:$PORT
EOF
}

start() {
    [[ -e "$DIR/ceph.conf" ]] && die "$DIR already holds a Ceph instance; stop it or use an empty folder"
    for tool in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool ceph-authtool; do
        command -v "$tool" >/dev/null || die "$tool not found: apt-get install radosgw ceph-mon ceph-osd"
    done
    mkdir -p "$DIR"/{run,log,crash,mon.a,osd.0}
    # A failed or interrupted start leaves nothing running; cleared once S3 answers.
    trap 'stop' EXIT
    trap 'exit 1' INT TERM
    local began=$SECONDS fsid osd_uuid mon_port
    fsid=$(cat /proc/sys/kernel/random/uuid)
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    mon_port=$(free_port)
    write_conf "$fsid" "$mon_port"

    ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$DIR/monmap" >/dev/null
    ceph_in ceph-mon --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/keyring" >>"$DIR/log/mkfs.out" 2>&1 ||
        die "ceph-mon --mkfs failed; see $DIR/log/mkfs.out"
    spawn mon.a ceph-mon -i a
    wait_for "the monitor" ceph_in ceph --connect-timeout 2 mon stat

    local osd_id
    osd_id=$(ceph_in ceph osd new "$osd_uuid")
    [[ "$osd_id" == 0 ]] || die "expected osd.0, the monitor handed out osd.$osd_id"
    ceph_in ceph-osd -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$DIR/log/mkfs.out" 2>&1 ||
        die "ceph-osd --mkfs failed; see $DIR/log/mkfs.out"
    spawn osd.0 ceph-osd -i 0
    wait_for "osd.0" bash -c "ceph --conf '$DIR/ceph.conf' osd dump | grep -q '^osd.0 up'"

    spawn rgw radosgw -n client.rgw
    wait_for "radosgw on 127.0.0.1:$PORT" s3_answers
    ceph_in radosgw-admin user create --uid loraplane-test --display-name "loraplane test" \
        --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" >/dev/null
    trap - EXIT
    log "S3 on http://127.0.0.1:$PORT after $((SECONDS - began))s (state in $DIR)"

    echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT"
    echo "export AWS_ACCESS_KEY_ID=$ACCESS_KEY"
    echo "export AWS_SECRET_ACCESS_KEY=$SECRET_KEY"
    echo "export AWS_DEFAULT_REGION=us-east-1"
}

# Kill one daemon `start` spawned. Its pid is only signalled while its command line still
# names this DIR's ceph.conf, so a recycled pid never hits another process. SIGKILL, because
# a memstore OSD holds its data in memory: there is nothing to flush, and SIGTERM takes ~6 s.
kill_daemon() {
    local pidfile="$DIR/run/$1.pid" pid
    [[ -f "$pidfile" ]] || return 0
    pid=$(<"$pidfile")
    if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$DIR/ceph.conf"; then
        kill -KILL "$pid"
        while running "$pid"; do sleep 0.05; done
    fi
    rm -f "$pidfile"
}

stop() {
    local name
    for name in rgw osd.0 mon.a; do
        kill_daemon "$name"
    done
}

gateway_start() {
    [[ -e "$DIR/ceph.conf" ]] || die "$DIR holds no Ceph instance; use start"
    [[ -f "$DIR/run/rgw.pid" ]] && running "$(<"$DIR/run/rgw.pid")" && die "radosgw already runs in $DIR"
    spawn rgw radosgw -n client.rgw
    wait_for "radosgw on 127.0.0.1:$PORT" s3_answers
}

case "${1:-}" in
start)
    (($# == 3)) || usage
    DIR=$(realpath -m "$2")
    PORT=$3
    [[ "$PORT" =~ ^[0-9]+$ ]] || usage
    start
    ;;
stop)
    (($# == 2)) || usage
    DIR=$(realpath -m "$2")
    stop
    ;;
gateway-stop)
    (($# == 2)) || usage
    DIR=$(realpath -m "$2")
    kill_daemon rgw
    ;;
gateway-start)
    (($# == 3)) || usage
    DIR=$(realpath -m "$2")
    PORT=$3
    [[ "$PORT" =~ ^[0-9]+$ ]] || usage
    gateway_start
    ;;
*) usage ;;
esac
