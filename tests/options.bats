#!/usr/bin/env bats
# options.bats: malformed command lines exit 2 before anything is opened or created, with a
# message on stderr that names the option (or the command); help and version go to stdout
# with exit 0; subcommands may be abbreviated to a unique prefix.

load helpers
bats_require_minimum_version 1.5.0

setup() {
    requires qemu-img
    SRC=$T/src.qcow2
    DST=$T/dst.img
    qemu-img create -q -f qcow2 "$SRC" 4M
}

# usage_error REGEX ARG...: `mirror-img ARG...` exits 2, prints nothing on stdout, says
# REGEX (extended) on stderr in a "mirror-img..." line, and $DST does not exist.
usage_error() {
    local msg=$1
    shift
    run --separate-stderr "$MI" "$@"
    [ "$status" -eq 2 ] || fail "exit status $status, not 2: $MI $* (stderr: $stderr)"
    [ -z "$output" ] || fail "stdout not empty: $output"
    [[ $stderr =~ ^mirror-img:\  ]] || fail "stderr does not start with 'mirror-img: ': $stderr"
    [[ $stderr =~ $msg ]] || fail "stderr lacks /$msg/: $stderr"
    [ ! -e "$DST" ] || fail "$DST was created"
}

@test "options: a --buf-size below the granularity is rounded up, and -v says so" {
    run "$MI" copy -v --buf-size=4096 -j 2 "$SRC" "$T/small.raw"
    assert_success
    assert_output --partial "--buf-size 4.0 KiB rounded up to"
    qemu_same "$SRC" "$T/small.raw"
}

@test "options: sizes that are not sizes, not powers of two, or too large" {
    usage_error "--granularity: '3K' is not a power of two" copy -g 3K "$SRC" "$DST"
    usage_error "--granularity: 'abc' is not a size" copy -g abc "$SRC" "$DST"
    usage_error "--granularity: '256' is not a power of two from 512" copy --granularity=256 "$SRC" "$DST"
    usage_error "--granularity: '128M'" copy -g 128M "$SRC" "$DST"
    usage_error "--buf-size: '1Q' is not a size" copy --buf-size 1Q "$SRC" "$DST"
    usage_error "--buf-size: '0' is outside 1..4G" copy --buf-size=0 "$SRC" "$DST"
    usage_error "--buf-size: '5G' is outside 1..4G" copy --buf-size=5G "$SRC" "$DST"
    usage_error "--speed: '-5' is not a size" copy -s -5 "$SRC" "$DST"
    usage_error "--speed: '99999999999T' is too large" copy -s 99999999999T "$SRC" "$DST"
    usage_error "--speed: '1.5M' is not a size" copy --speed=1.5M "$SRC" "$DST"
    usage_error "--speed: '' is not a size" copy --speed= "$SRC" "$DST"
}

@test "options: unknown error policies" {
    usage_error "--on-source-error: 'foo' is not report, ignore, enospc or stop" \
        copy --on-source-error=foo "$SRC" "$DST"
    usage_error "--on-target-error: 'Report' is not report" copy --on-target-error Report "$SRC" "$DST"
}

@test "options: unknown formats for -f and -O" {
    usage_error "-f: unknown format 'vmdk'" copy -f vmdk "$SRC" "$DST"
    usage_error "-O: cannot write format 'qcow'" copy -O qcow "$SRC" "$DST"
    usage_error "-O: cannot write format 'vdi'" copy --target-format=vdi "$SRC" "$DST"
    usage_error "-f: unknown format 'vmdk'" info -f vmdk "$SRC"
    usage_error "unknown format 'vmdk'" compare -F vmdk "$SRC" "$SRC"
}

@test "options: --sync other than full or top, and --sync=top with a raw target" {
    usage_error "--sync: 'bottom' is not full or top" copy --sync=bottom "$SRC" "$DST"
    usage_error "--sync=top needs a qcow2 target" copy --sync=top -O raw "$SRC" "$DST"
}

@test "options: bad -o keys and values" {
    usage_error "-o: unknown option 'foo'" copy -o foo=1 "$SRC" "$DST"
    usage_error "-o: 'compat' is not KEY=VALUE" copy -o compat "$SRC" "$DST"
    usage_error "-o cluster_size: '3K' is not a power of two" copy -o cluster_size=3K "$SRC" "$DST"
    usage_error "-o cluster_size: '4M'" copy -o cluster_size=4M "$SRC" "$DST"
    usage_error "-o compat: '2.0' is not 0.10 or 1.1" copy -o compat=2.0 "$SRC" "$DST"
    usage_error "-o compression_type: 'lz4'" copy -o compression_type=lz4 "$SRC" "$DST"
    usage_error "-o preallocation: 'some'" copy -o cluster_size=64K,preallocation=some "$SRC" "$DST"
}

@test "options: counts out of range (-j 0, --connections 0)" {
    usage_error "--threads: '0' is not a number from 1 to 64" copy -j 0 "$SRC" "$DST"
    usage_error "--threads: '65'" copy --threads=65 "$SRC" "$DST"
    usage_error "--threads: 'x'" copy -j x "$SRC" "$DST"
    usage_error "--connections: '0' is not a number from 1 to 16" copy --connections 0 "$SRC" "$DST"
}

@test "options: -n with --force" {
    usage_error "-n and --force exclude each other" copy -n --force "$SRC" "$DST"
}

@test "options: unknown options and missing option arguments" {
    usage_error "unrecognized option '--bogus'" copy --bogus "$SRC" "$DST"
    usage_error "invalid option -- 'Z'" copy -Z "$SRC" "$DST"
    usage_error "requires an argument -- 'g'" copy "$SRC" "$DST" -g
    usage_error "'--sync' requires an argument" copy "$SRC" "$DST" --sync
    usage_error "unrecognized option '--pivotal'" complete --pivotal "$T/sock"
}

@test "options: missing and extra operands" {
    usage_error "copy: expected SRC and DST" copy "$SRC"
    usage_error "copy: expected SRC and DST" copy "$SRC" "$DST" "$T/third"
    [ ! -e "$T/third" ]
    usage_error "expected an IMAGE" info
    usage_error "expected one IMAGE" info "$SRC" "$SRC"
    usage_error "expected two images" compare "$SRC"
    usage_error "expected two images" compare "$SRC" "$SRC" "$SRC"
    usage_error "expected the job's SOCKET" pause
    usage_error "too many arguments" cancel "$T/a" "$T/b"
    usage_error "expected SOCKET RATE" set-speed "$T/sock"
    usage_error "'fast' is not a rate" set-speed "$T/sock" fast
    [ ! -e "$T/sock" ]
}

@test "options: no command, unknown command, ambiguous prefix" {
    run --separate-stderr "$MI"
    assert_equal "$status" 2
    [[ $stderr == *"Usage: mirror-img COMMAND"* ]]
    usage_error "unknown command 'frob'" frob "$SRC" "$DST"
    usage_error "ambiguous command 'c': could be" c "$SRC" "$DST"
    [[ $stderr == *compare* && $stderr == *copy* && $stderr == *cancel* && $stderr == *complete* ]] ||
        fail "candidates not listed: $stderr"
    usage_error "ambiguous command 'co'" co "$SRC" "$DST"
}

@test "options: a unique prefix names its subcommand" {
    run --separate-stderr "$MI" inf "$SRC"
    assert_success
    assert_line "format: qcow2"
    run --separate-stderr "$MI" cop -q -O raw "$SRC" "$DST"
    assert_success
    qemu_same "$SRC" "$DST"
    run --separate-stderr "$MI" compa "$SRC" "$DST"
    assert_success
}

@test "options: --help exits 0 on stdout, for mirror-img and every subcommand" {
    run --separate-stderr "$MI" --help
    assert_success
    [ -z "$stderr" ]
    assert_output --partial "Usage: mirror-img COMMAND"
    assert_output --partial "copy"
    local sub
    for sub in $("$MI" --help | awk '/^Commands:/ { f = 1; next } f && /^  [a-z]/ { print $1 }'); do
        run --separate-stderr "$MI" "$sub" --help
        [ "$status" -eq 0 ] || fail "$sub --help: exit $status"
        [ -z "$stderr" ] || fail "$sub --help wrote on stderr: $stderr"
        [[ $output == "Usage: mirror-img $sub "* ]] || fail "$sub --help: $output"
    done
    run --separate-stderr "$MI" copy --help "$SRC" "$DST"
    assert_success
    [ ! -e "$DST" ]
}

@test "options: --version" {
    run --separate-stderr "$MI" --version
    assert_success
    assert_output --regexp '^mirror-img [0-9]+\.[0-9]+'
    run --separate-stderr "$MI" copy --version
    assert_success
    assert_output --regexp '^mirror-img [0-9]+\.[0-9]+'
}

@test "options: a usage error leaves an existing target untouched" {
    printf 'keep me' > "$DST"
    run --separate-stderr "$MI" copy -n --force "$SRC" "$DST"
    assert_equal "$status" 2
    run --separate-stderr "$MI" copy -n -g 3K "$SRC" "$DST"
    assert_equal "$status" 2
    [ "$(cat "$DST")" = "keep me" ]
}

@test "options: option errors come before a missing source is noticed" {
    usage_error "--granularity" copy -g 3K "$T/no-such-image" "$DST"
    usage_error "--sync" copy --sync=x "$T/no-such-image" "$DST"
}
