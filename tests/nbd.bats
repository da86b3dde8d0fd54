#!/usr/bin/env bats
# NBD endpoints against real servers on loopback: qemu-nbd (raw and qcow2, TCP and Unix
# socket) and nbdkit (memory, file; TLS; delay, error, log and nozero filters).  Every
# server is started and stopped inside its test.  QEMU's and libnbd's tools judge the
# results: qemu-img compare reads NBD URIs, cmp reads files the servers wrote.
load helpers

setup() {
    requires qemu-img
    # 16 MiB, data in [2M, 6M) and [12M, 14M), holes elsewhere.
    truncate -s 16M "$T/src.raw"
    dd if=/dev/urandom of="$T/src.raw" bs=1M count=4 seek=2 conv=notrunc status=none
    dd if=/dev/urandom of="$T/src.raw" bs=1M count=2 seek=12 conv=notrunc status=none
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# qemu_nbd_tcp IMAGE QEMU-NBD-ARGS...: serve IMAGE on 127.0.0.1 at a free port (retried
# if someone takes it first); sets PORT, URI (nbd://127.0.0.1:PORT/) and QPID.
qemu_nbd_tcp() {
    requires qemu-nbd python3
    local img=$1 i
    shift
    for i in 1 2 3 4 5; do
        PORT=$(free_port)
        if qemu-nbd --fork --pid-file="$T/qnbd.pid" -b 127.0.0.1 -p "$PORT" -t "$@" "$img" \
            </dev/null >>"$T/qnbd.log" 2>&1 3>&-; then
            QPID=$(cat "$T/qnbd.pid")
            on_exit "kill $QPID"
            URI="nbd://127.0.0.1:$PORT/"
            return 0
        fi
    done
    fail "qemu-nbd did not start: $(cat "$T/qnbd.log")"
}

# qemu_nbd_unix SOCK IMAGE QEMU-NBD-ARGS...: serve IMAGE on a Unix socket; sets URI, QPID.
qemu_nbd_unix() {
    requires qemu-nbd
    local sock=$1 img=$2
    shift 2
    qemu-nbd --fork --pid-file="$T/qnbd.pid" -k "$sock" -t "$@" "$img" \
        </dev/null >>"$T/qnbd.log" 2>&1 3>&- || fail "qemu-nbd did not start: $(cat "$T/qnbd.log")"
    QPID=$(cat "$T/qnbd.pid")
    on_exit "kill $QPID"
    URI="nbd+unix:///?socket=$sock"
}

# qemu_nbd_stop: stop the qemu-nbd started last and wait until it has let go of its image.
qemu_nbd_stop() {
    kill "$QPID"
    local i
    for i in $(seq 100); do kill -0 "$QPID" 2>/dev/null || return 0; sleep 0.05; done
    fail "qemu-nbd $QPID did not exit"
}

# requests LOG KIND: "offset count" (decimal) of each KIND (Read, Write, Zero, Trim...)
# request in an nbdkit log filter file.
requests() {
    local line off cnt
    while read -r line; do
        [[ $line =~ \ $2\ id=[0-9]+\ offset=0x([0-9a-f]+)\ count=0x([0-9a-f]+) ]] || continue
        echo "$((16#${BASH_REMATCH[1]})) $((16#${BASH_REMATCH[2]}))"
    done < "$1"
}

# big_src: 64 MiB of data, so that a slow server is still busy when it is killed.
big_src() {
    truncate -s 64M "$T/big.raw"
    dd if=/dev/urandom of="$T/big.raw" bs=1M count=64 conv=notrunc status=none
    truncate -s 64M "$T/dst.raw"
}

# ---- qemu-nbd ----

@test "qemu-nbd over TCP, raw export as the source: the copy is identical" {
    qemu_nbd_tcp "$T/src.raw" -f raw -r
    run "$MI" copy "$URI" "$T/dst.raw"
    assert_success
    qemu_same "$T/src.raw" "$T/dst.raw"
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "qemu-nbd over TCP, a qcow2 image by export name as the source, to a qcow2 file" {
    qemu-img convert -f raw -O qcow2 "$T/src.raw" "$T/src.qcow2"
    qemu_nbd_tcp "$T/src.qcow2" -f qcow2 -r -x disk0
    run "$MI" copy -O qcow2 "${URI}disk0" "$T/dst.qcow2"
    assert_success
    qemu_same "$T/src.qcow2" "$T/dst.qcow2"
    qcow2_ok "$T/dst.qcow2"
    # Only the data was allocated: the holes of the source stayed holes.
    run qemu-img map --output=json "$T/dst.qcow2"
    assert_output --partial '"start": 0, "length": 2097152, "depth": 0, "present": false, "zero": true'
}

@test "qemu-nbd over TCP, raw export as the target" {
    truncate -s 16M "$T/dst.raw"
    qemu_nbd_tcp "$T/dst.raw" -f raw
    run "$MI" copy "$T/src.raw" "$URI"
    assert_success
    qemu_nbd_stop
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "qemu-nbd on a Unix socket, a qcow2 image as the target, from a qcow2 source" {
    qemu-img convert -f raw -O qcow2 "$T/src.raw" "$T/src.qcow2"
    qemu-img create -q -f qcow2 "$T/dst.qcow2" 16M
    qemu_nbd_unix "$T/q.sock" "$T/dst.qcow2" -f qcow2 --discard=unmap
    run "$MI" copy -f qcow2 "$T/src.qcow2" "$URI"
    assert_success
    run qemu-img compare -f raw -F raw "$T/src.raw" "$URI"
    assert_success
    qemu_nbd_stop
    qemu_same "$T/src.qcow2" "$T/dst.qcow2"
    qcow2_ok "$T/dst.qcow2"
}

@test "qemu-nbd on a Unix socket, qcow2 export by name as the source" {
    qemu-img convert -f raw -O qcow2 "$T/src.raw" "$T/src.qcow2"
    qemu_nbd_unix "$T/q.sock" "$T/src.qcow2" -f qcow2 -r -x disk0
    run "$MI" copy "nbd+unix:///disk0?socket=$T/q.sock" "$T/dst.raw"
    assert_success
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "qemu-nbd limited to 2 clients but offering multi-conn: no hang, all data copied" {
    qemu_nbd_unix "$T/q.sock" "$T/src.raw" -f raw -r -e 2
    run timeout 20 "$MI" copy --connections 4 "$URI" "$T/dst.raw"
    assert_success
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "a read-only export as the target: refused before writing, exit 1" {
    rand_file "$T/dst.raw" 16
    cp "$T/dst.raw" "$T/dst.orig"
    qemu_nbd_unix "$T/q.sock" "$T/dst.raw" -f raw -r
    run "$MI" copy "$T/src.raw" "$URI"
    assert_failure 1
    assert_output "mirror-img: $URI: the export is read-only"
    nbdkit_start "$T/k.sock" -r --filter=log file "$T/dst.raw" logfile="$T/k.log"
    run "$MI" copy "$T/src.raw" "nbd+unix:///?socket=$T/k.sock"
    assert_failure 1
    assert_output --partial "the export is read-only"
    qemu_nbd_stop
    cmp "$T/dst.raw" "$T/dst.orig"
    ! grep -q 'Write id=' "$T/k.log"
}

# ---- nbdkit: memory and file plugins ----

@test "nbdkit memory as the target over a Unix socket: read back identical" {
    nbdkit_start "$T/m.sock" memory 16M
    URI="nbd+unix:///?socket=$T/m.sock"
    run "$MI" copy "$T/src.raw" "$URI"
    assert_success
    run qemu-img compare -f raw -F raw "$T/src.raw" "$URI"
    assert_success
    nbdcopy "$URI" "$T/back.raw"
    cmp "$T/src.raw" "$T/back.raw"
}

@test "a qcow2 file to an nbdkit memory target, then NBD to NBD" {
    qemu-img convert -f raw -O qcow2 "$T/src.raw" "$T/src.qcow2"
    nbdkit_start "$T/a.sock" memory 16M
    nbdkit_start "$T/b.sock" memory 16M
    run "$MI" copy "$T/src.qcow2" "nbd+unix:///?socket=$T/a.sock"
    assert_success
    run "$MI" copy "nbd+unix:///?socket=$T/a.sock" "nbd+unix:///?socket=$T/b.sock"
    assert_success
    run qemu-img compare -f raw -F raw "$T/src.raw" "nbd+unix:///?socket=$T/b.sock"
    assert_success
}

@test "nbdkit file as the target: holes stay holes, flushed at the end" {
    truncate -s 16M "$T/dst.raw"
    nbdkit_start "$T/f.sock" --filter=log file "$T/dst.raw" logfile="$T/f.log"
    run "$MI" copy "$T/src.raw" "nbd+unix:///?socket=$T/f.sock"
    assert_success
    cmp "$T/src.raw" "$T/dst.raw"
    [ "$(alloc_bytes "$T/dst.raw")" -le $((7 * 1024 * 1024)) ]
    grep -q 'Flush id=' "$T/f.log"
}

@test "a target holding data gets its zero ranges zeroed (NBD WRITE_ZEROES)" {
    rand_file "$T/dst.raw" 16
    nbdkit_start "$T/f.sock" --filter=log file "$T/dst.raw" logfile="$T/f.log"
    run "$MI" copy "$T/src.raw" "nbd+unix:///?socket=$T/f.sock"
    assert_success
    cmp "$T/src.raw" "$T/dst.raw"
    grep -q 'Zero id=' "$T/f.log"
}

@test "a target without WRITE_ZEROES: zero ranges are trimmed when the trim leaves zeros" {
    rand_file "$T/dst.raw" 16
    nbdkit_start "$T/f.sock" --filter=log --filter=nozero file "$T/dst.raw" logfile="$T/f.log"
    run "$MI" copy "$T/src.raw" "nbd+unix:///?socket=$T/f.sock"
    assert_success
    cmp "$T/src.raw" "$T/dst.raw"
    grep -q 'Trim id=' "$T/f.log"
    ! grep -q 'Zero id=' "$T/f.log"
}

@test "a target with neither WRITE_ZEROES nor block status telling zeros: zeros are written" {
    rand_file "$T/dst.raw" 16
    nbdkit_start "$T/f.sock" --filter=log --filter=nozero --filter=noextents file "$T/dst.raw" \
        logfile="$T/f.log"
    run "$MI" copy "$T/src.raw" "nbd+unix:///?socket=$T/f.sock"
    assert_success
    cmp "$T/src.raw" "$T/dst.raw"
    ! grep -q 'Zero id=' "$T/f.log"
    # Every byte was written: 6 MiB of data, 10 MiB of zeros.
    local total=0 off cnt
    while read -r off cnt; do total=$((total + cnt)); done < <(requests "$T/f.log" Write)
    [ "$total" -eq $((16 * 1024 * 1024)) ]
}

@test "an NBD source's holes are never read (block status), and a sparse target stays sparse" {
    nbdkit_start "$T/s.sock" -r --filter=log file "$T/src.raw" logfile="$T/s.log"
    run "$MI" copy "nbd+unix:///?socket=$T/s.sock" "$T/dst.raw"
    assert_success
    cmp "$T/src.raw" "$T/dst.raw"
    [ "$(alloc_bytes "$T/dst.raw")" -le $((7 * 1024 * 1024)) ]
    local M=$((1024 * 1024)) total=0 off cnt
    while read -r off cnt; do
        # every read lies inside [2M, 6M) or [12M, 14M)
        if ! { [ "$off" -ge $((2 * M)) ] && [ $((off + cnt)) -le $((6 * M)) ]; } &&
           ! { [ "$off" -ge $((12 * M)) ] && [ $((off + cnt)) -le $((14 * M)) ]; }; then
            echo "read of a hole: offset $off count $cnt"
            return 1
        fi
        total=$((total + cnt))
    done < <(requests "$T/s.log" Read)
    [ "$total" -eq $((6 * M)) ]
}

@test "multi-conn: --connections N opens N connections to a server that allows it" {
    nbdkit_start "$T/m.sock" --filter=log memory 64M logfile="$T/m.log"
    truncate -s 64M "$T/big.raw"
    dd if=/dev/urandom of="$T/big.raw" bs=1M count=32 conv=notrunc status=none
    run "$MI" copy -j 4 --connections 3 "$T/big.raw" "nbd+unix:///?socket=$T/m.sock"
    assert_success
    [ "$(grep -o 'connection=[0-9]* Write' "$T/m.log" | sort -u | wc -l)" -eq 3 ]
    run qemu-img compare -f raw -F raw "$T/big.raw" "nbd+unix:///?socket=$T/m.sock"
    assert_success
}

@test "one connection: the workers' requests are in flight together on it" {
    nbdkit_start "$T/m.sock" --filter=log --filter=delay memory 16M wdelay=50ms logfile="$T/m.log"
    run "$MI" copy -j 2 --connections 1 "$T/src.raw" "nbd+unix:///?socket=$T/m.sock"
    assert_success
    [ "$(grep -o 'connection=[0-9]* Write' "$T/m.log" | sort -u | wc -l)" -eq 1 ]
    # Most writes in flight at once on that one connection.
    local most
    most=$(awk '/ Write id=/ { n++; if (n > m) m = n } /\.\.\.Write id=/ { n-- } END { print m }' "$T/m.log")
    echo "at most $most writes in flight"
    [ "$most" -ge 4 ]
    run qemu-img compare -f raw -F raw "$T/src.raw" "nbd+unix:///?socket=$T/m.sock"
    assert_success
}

# ---- TLS ----

psk_file() { # psk_file FILE: a key for the user running the tests
    requires python3
    python3 -c "import secrets; print('$(id -un):' + secrets.token_hex(32))" > "$1"
}

@test "nbds+unix with a pre-shared key: the right key copies, a wrong key is refused" {
    psk_file "$T/keys.psk"
    psk_file "$T/wrong.psk"
    nbdkit_start "$T/t.sock" --tls=require --tls-psk="$T/keys.psk" memory 16M
    run "$MI" copy --tls-psk-file "$T/keys.psk" "$T/src.raw" "nbds+unix:///?socket=$T/t.sock"
    assert_success
    run "$MI" copy --tls-psk-file "$T/keys.psk" "nbds+unix:///?socket=$T/t.sock" "$T/back.raw"
    assert_success
    cmp "$T/src.raw" "$T/back.raw"
    run "$MI" copy --tls-psk-file "$T/wrong.psk" "nbds+unix:///?socket=$T/t.sock" "$T/no.raw"
    assert_failure 1
    assert_output --regexp "^mirror-img: nbds\+unix:///\?socket=.*: cannot connect: .*TLS"
    [ ! -e "$T/no.raw" ]
    run "$MI" copy "$T/src.raw" "nbd+unix:///?socket=$T/t.sock"
    assert_failure 1
    assert_output --partial "cannot connect: "
    assert_output --partial "(use an nbds:// URI)"
}

@test "nbds:// over TCP with a pre-shared key, the username from the URI" {
    requires python3
    python3 -c "import secrets; print('alice:' + secrets.token_hex(32))" > "$T/keys.psk"
    local port
    port=$(free_port)
    nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$port" -P "$T/t.pid" --tls=require \
        --tls-psk="$T/keys.psk" memory 16M </dev/null >"$T/t.log" 2>&1 3>&- &
    wait_for test -s "$T/t.pid" || fail "nbdkit did not start"
    on_exit "kill \$(cat '$T/t.pid')"
    wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" || fail "nbdkit does not listen on $port"
    run "$MI" copy --tls-psk-file "$T/keys.psk" "$T/src.raw" "nbds://alice@127.0.0.1:$port/"
    assert_success
    run "$MI" copy --tls-psk-file "$T/keys.psk" "nbds://alice@127.0.0.1:$port/" "$T/back.raw"
    assert_success
    cmp "$T/src.raw" "$T/back.raw"
}

# make_pki DIR: a CA, and a server certificate for localhost / 127.0.0.1 signed by it.
make_pki() {
    requires openssl
    local d=$1
    mkdir -p "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=mirror-img test CA" \
        -keyout "$d/ca-key.pem" -out "$d/ca-cert.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$d/server-key.pem" -out "$d/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$d/ext"
    openssl x509 -req -days 2 -in "$d/server.csr" -CA "$d/ca-cert.pem" -CAkey "$d/ca-key.pem" \
        -CAcreateserial -extfile "$d/ext" -out "$d/server-cert.pem" 2>/dev/null
}

@test "nbds:// with X.509 certificates: the right CA copies, another CA or none is refused" {
    requires python3
    make_pki "$T/pki"
    make_pki "$T/other"
    mkdir "$T/client" "$T/empty"
    cp "$T/pki/ca-cert.pem" "$T/client/"
    local port
    port=$(free_port)
    nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$port" -P "$T/t.pid" --tls=require \
        --tls-certificates="$T/pki" memory 16M </dev/null >"$T/t.log" 2>&1 3>&- &
    wait_for test -s "$T/t.pid" || fail "nbdkit did not start"
    on_exit "kill \$(cat '$T/t.pid')"
    wait_for bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" || fail "nbdkit does not listen on $port"
    run "$MI" copy --tls-certificates "$T/client" "$T/src.raw" "nbds://127.0.0.1:$port/"
    assert_success
    run "$MI" copy --tls-certificates "$T/client" "nbds://127.0.0.1:$port/" "$T/back.raw"
    assert_success
    cmp "$T/src.raw" "$T/back.raw"
    run "$MI" copy --tls-certificates "$T/other" "$T/src.raw" "nbds://127.0.0.1:$port/"
    assert_failure 1
    assert_output --partial "cannot connect: gnutls_handshake: Error in the certificate verification"
    run "$MI" copy --tls-certificates "$T/empty" "$T/src.raw" "nbds://127.0.0.1:$port/"
    assert_failure 1
    assert_output "mirror-img: nbds://127.0.0.1:$port/: cannot read $T/empty/ca-cert.pem (the CA that signed the server's certificate): No such file or directory"
}

# ---- latency and faults ----

@test "1 ms of latency (nbdkit delay filter) on both ends: correct" {
    nbdkit_start "$T/s.sock" -r --filter=delay file "$T/src.raw" rdelay=1ms
    nbdkit_start "$T/d.sock" --filter=delay memory 16M rdelay=1ms wdelay=1ms
    run "$MI" copy -j 4 "nbd+unix:///?socket=$T/s.sock" "nbd+unix:///?socket=$T/d.sock"
    assert_success
    run qemu-img compare -f raw -F raw "$T/src.raw" "nbd+unix:///?socket=$T/d.sock"
    assert_success
}

@test "EIO on reads under report: exit 1 naming the range, no target left" {
    nbdkit_start "$T/s.sock" --filter=error file "$T/src.raw" error=EIO error-pread-rate=100%
    run "$MI" copy "nbd+unix:///?socket=$T/s.sock" "$T/dst.raw"
    assert_failure 1
    assert_output --regexp "^mirror-img: nbd\+unix:///\?socket=.*: read error at offset [0-9]+, length [0-9]+: Input/output error$"
    [ ! -e "$T/dst.raw" ]
}

@test "EIO on writes under report: exit 1 naming the range" {
    truncate -s 16M "$T/dst.raw"
    nbdkit_start "$T/d.sock" --filter=error file "$T/dst.raw" error=EIO error-pwrite-rate=100%
    run "$MI" copy "$T/src.raw" "nbd+unix:///?socket=$T/d.sock"
    assert_failure 1
    assert_output --regexp "^mirror-img: nbd\+unix:///\?socket=.*: write error at offset [0-9]+, length [0-9]+: Input/output error$"
}

@test "EIO on reads under ignore: retried until they stop, then identical" {
    touch "$T/trigger"
    nbdkit_start "$T/s.sock" --filter=error file "$T/src.raw" error=EIO \
        error-pread-rate=100% error-pread-file="$T/trigger"
    ( sleep 0.3; rm -f "$T/trigger" ) &
    run "$MI" copy --json --on-source-error=ignore "nbd+unix:///?socket=$T/s.sock" "$T/dst.raw"
    assert_success
    assert_output --partial '"action": "ignore"'
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "EIO on writes under ignore: retried until they stop, then identical" {
    truncate -s 16M "$T/dst.raw"
    touch "$T/trigger"
    nbdkit_start "$T/d.sock" --filter=error file "$T/dst.raw" error=EIO \
        error-pwrite-rate=100% error-pwrite-file="$T/trigger"
    ( sleep 0.3; rm -f "$T/trigger" ) &
    run "$MI" copy --json --on-target-error=ignore "$T/src.raw" "nbd+unix:///?socket=$T/d.sock"
    assert_success
    assert_output --partial '"operation": "write", "action": "ignore"'
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "random EIO on 3% of the writes, 8 workers, under ignore: retried, identical" {
    big_src
    nbdkit_start "$T/d.sock" --filter=error --filter=delay file "$T/dst.raw" wdelay=1ms \
        error=EIO error-pwrite-rate=3%
    # 256 KiB per request of the engine: each retry is one NBD write.
    run "$MI" copy --json -j 8 --buf-size 2M --on-target-error=ignore "$T/big.raw" \
        "nbd+unix:///?socket=$T/d.sock"
    assert_success
    assert_output --partial '"event": "BLOCK_JOB_ERROR"'
    cmp "$T/big.raw" "$T/dst.raw"
}

@test "ENOSPC under enospc: the job pauses; resumed after the space is back, identical" {
    truncate -s 16M "$T/dst.raw"
    touch "$T/trigger"
    nbdkit_start "$T/d.sock" --filter=error file "$T/dst.raw" error=ENOSPC \
        error-pwrite-rate=100% error-pwrite-file="$T/trigger"
    "$MI" copy --json --on-target-error=enospc --socket "$T/job.sock" \
        "$T/src.raw" "nbd+unix:///?socket=$T/d.sock" > "$T/events" &
    local pid=$!
    on_exit "kill $pid"
    wait_for grep -q BLOCK_JOB_ERROR "$T/events"
    grep -q '"action": "stop"' "$T/events"
    grep -q 'No space left on device' "$T/events"
    run "$MI" status --json "$T/job.sock"
    assert_output --partial '"status": "paused"'
    rm -f "$T/trigger"
    run "$MI" resume "$T/job.sock"
    assert_success
    wait $pid
    grep -q BLOCK_JOB_COMPLETED "$T/events"
    cmp "$T/src.raw" "$T/dst.raw"
}

@test "a lost connection under report: exit 1, saying the connection was lost" {
    big_src
    nbdkit_start "$T/d.sock" --filter=log --filter=delay file "$T/dst.raw" wdelay=300ms \
        logfile="$T/d.log"
    "$MI" copy "$T/big.raw" "nbd+unix:///?socket=$T/d.sock" 2> "$T/err" &
    local pid=$! st=0
    on_exit "kill $pid"
    wait_for grep -q 'Write id=' "$T/d.log"
    kill -9 "$(cat "$T/d.sock.pid")"
    wait $pid || st=$?
    cat "$T/err"
    [ "$st" -eq 1 ]
    grep -Eq "^mirror-img: nbd\+unix:///\?socket=.*: write error at offset [0-9]+, length [0-9]+: lost the connection to the server" "$T/err"
}

@test "a lost connection under ignore: reconnects to the restarted server, identical" {
    big_src
    nbdkit_start "$T/d.sock" --filter=log --filter=delay file "$T/dst.raw" wdelay=300ms \
        logfile="$T/d.log"
    "$MI" copy --json --on-target-error=ignore "$T/big.raw" "nbd+unix:///?socket=$T/d.sock" \
        > "$T/events" 2> "$T/err" &
    local pid=$!
    on_exit "kill $pid"
    wait_for grep -q 'Write id=' "$T/d.log"
    kill -9 "$(cat "$T/d.sock.pid")"
    rm -f "$T/d.sock" "$T/d.sock.pid"
    nbdkit_start "$T/d.sock" --filter=delay file "$T/dst.raw" wdelay=10ms
    wait $pid || { cat "$T/err"; false; }
    grep -q 'lost the connection to the server' "$T/events"
    grep -q BLOCK_JOB_COMPLETED "$T/events"
    cmp "$T/big.raw" "$T/dst.raw"
}

@test "a lost source connection under ignore: reconnects, identical" {
    big_src
    nbdkit_start "$T/s.sock" -r --filter=log --filter=delay file "$T/big.raw" rdelay=300ms \
        logfile="$T/s.log"
    rm -f "$T/dst.raw"
    "$MI" copy --json --on-source-error=ignore "nbd+unix:///?socket=$T/s.sock" "$T/dst.raw" \
        > "$T/events" 2> "$T/err" &
    local pid=$!
    on_exit "kill $pid"
    wait_for grep -q 'Read id=' "$T/s.log"
    kill -9 "$(cat "$T/s.sock.pid")"
    rm -f "$T/s.sock" "$T/s.sock.pid"
    nbdkit_start "$T/s.sock" -r file "$T/big.raw"
    wait $pid || { cat "$T/err"; false; }
    grep -q '"operation": "read", "action": "ignore"' "$T/events"
    cmp "$T/big.raw" "$T/dst.raw"
}

@test "a refused connection: exit 1, cannot connect, nothing created" {
    requires python3
    local port
    port=$(free_port)
    run "$MI" copy "nbd://127.0.0.1:$port/" "$T/dst.raw"
    assert_failure 1
    assert_output "mirror-img: nbd://127.0.0.1:$port/: cannot connect: connect: 127.0.0.1:$port: could not connect to remote host: Connection refused"
    [ ! -e "$T/dst.raw" ]
    run "$MI" copy "$T/src.raw" "nbd+unix:///?socket=$T/nobody.sock"
    assert_failure 1
    assert_output --regexp "^mirror-img: nbd\+unix:///\?socket=.*/nobody.sock: cannot connect: .*No such file or directory"
}

@test "an export smaller than the source: refused before writing, exit 1" {
    nbdkit_start "$T/m.sock" --filter=log memory 8M logfile="$T/m.log"
    run "$MI" copy "$T/src.raw" "nbd+unix:///?socket=$T/m.sock"
    assert_failure 1
    assert_output "mirror-img: nbd+unix:///?socket=$T/m.sock: target is smaller than the source (8.0 MiB < 16.0 MiB)"
    ! grep -Eq '(Write|Zero|Trim) id=' "$T/m.log"
}

@test "an NBD source needs no format, and refuses one it is not" {
    nbdkit_start "$T/s.sock" -r file "$T/src.raw"
    run "$MI" copy -f qcow2 "nbd+unix:///?socket=$T/s.sock" "$T/dst.raw"
    assert_failure
    assert_output --partial "an NBD export is raw, not qcow2"
    [ ! -e "$T/dst.raw" ]
}
