#!/usr/bin/env bats
# Security: file modes of the journal and the control socket, the socket's peer check,
# backing and data file names (plain local files only, relative to the image), --no-backing,
# the shim's environment, and raw images that look like qcow2.
load helpers

SHIM=$MIRROR_IMG_SHIM

# A directory other users can traverse (bats' own temporary directories are private), so
# that a refusal comes from the socket itself, not from the path leading to it.
open_dir() {
    PUB=$(mktemp -d /tmp/mi-security.XXXXXX)
    chmod 0711 "$PUB"
    on_exit "rm -rf '$PUB'"
}

# as_nobody CMD...: run CMD as an unprivileged other user.
as_nobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups -- "$@"; }

needs_nobody() {
    requires setpriv
    [ "$(id -u)" = 0 ] || skip "needs root to switch to another user"
    as_nobody test -x "$MI" || skip "$MI is not reachable by user nobody"
}

@test "the journal and the control socket are mode 0600, whatever the umask" {
    rand_file "$T/src.raw" 8
    (umask 000 && "$MI" run --journal "$T/j" "$T/src.raw" -- true)
    [ "$(stat -c %a "$T/j")" = 600 ]
    (umask 000 && exec "$MI" follow --journal "$T/j" "$T/src.raw" "$T/dst.raw") 2>"$T/err" &
    pid=$!
    on_exit "kill -9 $pid"
    wait_for test -S "$T/j.sock"
    [ "$(stat -c %a "$T/j.sock")" = 600 ]
    (umask 000 && exec "$MI" copy -s 1M --socket "$T/c.sock" "$T/src.raw" "$T/c.raw") &
    cpid=$!
    on_exit "kill -9 $cpid"
    wait_for test -S "$T/c.sock"
    [ "$(stat -c %a "$T/c.sock")" = 600 ]
    "$MI" cancel "$T/c.sock"
    "$MI" cancel "$T/j.sock"
    wait $pid || true
}

@test "the control socket refuses another user: by its mode, and by the peer's uid" {
    needs_nobody
    open_dir
    truncate -s 16M "$T/src.raw"
    dd if=/dev/urandom of="$T/src.raw" bs=1M count=4 conv=notrunc status=none
    "$MI" copy -s 1M --socket "$PUB/job.sock" "$T/src.raw" "$T/dst.raw" 2>"$T/err" &
    pid=$!
    on_exit "kill -9 $pid"
    wait_for test -S "$PUB/job.sock"
    run as_nobody "$MI" status "$PUB/job.sock"
    assert_failure 1
    assert_output --regexp "^mirror-img: .*job.sock.*Permission denied"
    # Even when the mode lets it connect, the server checks who is on the other end and
    # answers with an error, which the client shows (every time: the server answers before
    # it closes, and the client reads the answer even if its own send found the
    # connection closed).
    chmod 0666 "$PUB/job.sock"
    for cmd in cancel pause status cancel pause status cancel pause status cancel; do
        run as_nobody "$MI" $cmd "$PUB/job.sock"
        assert_failure 1
        assert_output "mirror-img: $PUB/job.sock: permission denied"
    done
    # The raw answer is QMP-shaped (python drops to nobody itself: it may live under /root).
    run python3 - "$PUB/job.sock" <<'PY'
import os, socket, sys
os.setgroups([]); os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
print(s.makefile().readline().strip())
PY
    assert_output '{"error": {"class": "GenericError", "desc": "permission denied"}}'
    run "$MI" status --json "$PUB/job.sock"
    assert_success
    assert_output --partial '"status": "running"'
    "$MI" cancel "$PUB/job.sock"
    st=0
    wait $pid || st=$?
    [ "$st" -eq 3 ]
}

@test "a control client whose job closes the connection says so (no EPIPE, no SIGPIPE)" {
    # A stand-in job: per connection, close at once; read the request and close without an
    # answer; answer at once and close without reading the request.
    python3 - "$T/fake.sock" close read answer <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(8)
for mode in sys.argv[2:]:
    c, _ = s.accept()
    if mode == "read":
        c.makefile().readline()
    elif mode == "answer":
        c.sendall(b'{"error": {"class": "GenericError", "desc": "permission denied"}}\n')
    c.close()
PY
    fake=$!
    on_exit "kill $fake"
    wait_for test -S "$T/fake.sock"
    for _ in 1 2; do
        run "$MI" pause "$T/fake.sock"
        assert_failure 1
        assert_output "mirror-img: $T/fake.sock: the job closed the connection without answering"
    done
    run "$MI" cancel "$T/fake.sock"
    assert_failure 1
    assert_output "mirror-img: $T/fake.sock: permission denied"
    wait $fake
}

@test "backing files with a protocol prefix or a json: name are refused, nothing is opened" {
    requires qemu-img
    for name in 'json:{"file.driver":"file","file.filename":"/etc/passwd"}' \
        'nbd://127.0.0.1:10809/export' 'file:/etc/passwd' 'https://example.com/a.img' \
        'nbd+unix:///x?socket=/tmp/s'; do
        rm -f "$T/top.qcow2"
        qemu-img create -q -f qcow2 -u -b "$name" -F raw "$T/top.qcow2" 1M
        run "$MI" copy "$T/top.qcow2" "$T/out.raw"
        assert_failure 1
        assert_output "mirror-img: $T/top.qcow2: backing file '$name' is not a local file name (protocols are not supported)"
        [ ! -e "$T/out.raw" ]
        run "$MI" info "$T/top.qcow2"
        assert_failure 1
        assert_output --partial "is not a local file name"
    done
}

@test "an external data file with a protocol prefix is refused" {
    requires qemu-img
    (cd "$T" && qemu-img create -q -f qcow2 -o data_file=dataaaaaaaaaaaaa.raw df.qcow2 1M)
    # Rename the data file in the header extension: same length, a protocol this time.
    python3 - "$T/df.qcow2" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
i = b.find(b"dataaaaaaaaaaaaa.raw")
b[i:i + 20] = b"nbd://10.0.0.1/x.raw"
open(p, "wb").write(b)
PY
    run "$MI" copy "$T/df.qcow2" "$T/out.raw"
    assert_failure 1
    assert_output --partial "external data file 'nbd://10.0.0.1/x.raw' is not a local file name"
    [ ! -e "$T/out.raw" ]
}

@test "relative backing names resolve against the image's directory, not the working directory" {
    requires qemu-img
    mkdir "$T/imgs" "$T/elsewhere" "$T/imgs/sub"
    rand_file "$T/imgs/sub/base.raw" 2
    rand_file "$T/elsewhere/base.raw" 2       # a decoy with the same name
    mkdir -p "$T/elsewhere/sub"
    cp "$T/elsewhere/base.raw" "$T/elsewhere/sub/base.raw"
    qemu-img create -q -f qcow2 -b sub/base.raw -F raw "$T/imgs/mid.qcow2" 2M
    qemu-io -f qcow2 -c 'write -P 0x11 64k 64k' "$T/imgs/mid.qcow2" >/dev/null
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$T/imgs/top.qcow2" 2M
    qemu-io -f qcow2 -c 'write -P 0x22 1M 64k' "$T/imgs/top.qcow2" >/dev/null
    cd "$T/elsewhere"
    "$MI" copy -O raw ../imgs/top.qcow2 out.raw
    qemu-img convert -O raw ../imgs/top.qcow2 ref.raw
    cmp out.raw ref.raw
    run "$MI" info ../imgs/top.qcow2
    assert_success
    assert_output --partial "../imgs/mid.qcow2"
}

@test "--no-backing refuses any backing chain, before creating the target" {
    requires qemu-img
    truncate -s 1M "$T/base.raw"
    qemu-img create -q -f qcow2 -b base.raw -F raw "$T/top.qcow2" 1M
    run "$MI" copy --no-backing "$T/top.qcow2" "$T/out.raw"
    assert_failure 1
    assert_output "mirror-img: $T/top.qcow2: the image has a backing file (base.raw) and backing files are not allowed"
    [ ! -e "$T/out.raw" ]
    # Also when the backing file does not exist, and with --sync=top.
    qemu-img create -q -f qcow2 -u -b missing.qcow2 -F qcow2 "$T/orphan.qcow2" 1M
    run "$MI" copy --no-backing "$T/orphan.qcow2" "$T/out.raw"
    assert_failure 1
    assert_output --partial "backing files are not allowed"
    run "$MI" copy --no-backing --sync=top "$T/top.qcow2" "$T/out.qcow2"
    assert_failure 1
    assert_output --partial "backing files are not allowed"
    [ ! -e "$T/out.qcow2" ]
    # An image without a chain is fine.
    qemu-img create -q -f qcow2 "$T/alone.qcow2" 1M
    "$MI" copy --no-backing "$T/alone.qcow2" "$T/alone.raw"
}

@test "the shim reads its environment with secure_getenv, never getenv" {
    requires nm
    run nm -D --undefined-only "$SHIM"
    assert_success
    assert_output --regexp "U secure_getenv(@|$)"
    refute_output --regexp "U getenv(@|$)"
}

@test "a raw image that begins like a qcow2 header is copied byte for byte with -f raw" {
    requires qemu-img
    # A qcow2 header naming /etc/passwd as its backing file: read as qcow2 it would pull
    # the password file in; read as raw it is just bytes.
    qemu-img create -q -f qcow2 -u -b /etc/passwd -F raw "$T/looks.img" 1M
    qemu-io -f qcow2 -c 'write -P 0x5a 0 64k' "$T/looks.img" >/dev/null 2>&1 || true
    "$MI" copy -f raw "$T/looks.img" "$T/out.raw"
    cmp "$T/looks.img" "$T/out.raw"
    [ "$(stat -c %s "$T/out.raw")" -eq "$(stat -c %s "$T/looks.img")" ]
    run "$MI" info -f raw "$T/looks.img"
    if [ "$status" -eq 0 ]; then assert_output --partial "raw"; fi
    # Without -f it is probed as qcow2, and its chain shows.
    run "$MI" info "$T/looks.img"
    assert_output --partial "/etc/passwd"
    # An existing target given with -n -O raw is written as raw too, never parsed.
    cp "$T/looks.img" "$T/target.img"
    truncate -s 2M "$T/target.img"
    "$MI" copy -n -O raw -f raw "$T/out.raw" "$T/target.img"
    cmp -n "$(stat -c %s "$T/out.raw")" "$T/out.raw" "$T/target.img"
}
