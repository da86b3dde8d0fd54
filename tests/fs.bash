# fs.bash: scratch file systems for tests/run.sh and tests/soak.sh.  The live mirror must
# not assume anything of the file system under an image, so the suites that write through
# the shim run again on a tmpfs and on ext4, XFS and btrfs, each made here on a loop device.
#
# The images live on the project's disk (build/fs/run-PID/), never under /tmp, which may
# itself be a tmpfs: a loop device over a tmpfs file would test tmpfs's page cache twice.
# Each run has a folder of its own, so two runs at once never unmount each other's file
# systems, and a run that was killed is cleaned up by the next one.
#
#   fs_init TOP          set FS_DIR, clean up after runs that died
#   fs_why_not FS        print why FS cannot be made here (nothing when it can)
#   fs_make FS [SIZE]    make and mount FS (default 8G), set FS_MNT; on failure set FS_WHY
#   fs_remove FS         unmount FS, detach its loop device, delete its image
#   fs_remove_all        fs_remove every file system this run made (for a trap)
#
# Callers set their trap before fs_make: `trap fs_remove_all EXIT`.

FS_ALL="tmpfs ext4 xfs btrfs"
FS_MADE=()

fs_init() {
    local d pid
    FS_DIR=$1/build/fs/run-$$
    for d in "$1"/build/fs/run-*; do
        [ -d "$d" ] || continue
        pid=${d##*-}
        kill -0 "$pid" 2>/dev/null && continue
        echo "fs: cleaning up after run $pid, which did not finish"
        _fs_clean_dir "$d"
    done
    mkdir -p "$FS_DIR"
}

fs_why_not() {
    local fs=$1
    if [ "$(id -u)" != 0 ]; then
        echo "mounting a file system needs root"
        return
    fi
    if ! grep -qw "$fs" /proc/filesystems; then
        modprobe -q "$fs" 2>/dev/null
        grep -qw "$fs" /proc/filesystems || { echo "the kernel has no $fs"; return; }
    fi
    [ "$fs" = tmpfs ] && return
    command -v losetup >/dev/null || { echo "losetup is not installed (package mount)"; return; }
    if [ ! -e /dev/loop-control ] && ! ls /dev/loop[0-9]* >/dev/null 2>&1; then
        echo "no loop devices here (/dev/loop-control is missing)"
        return
    fi
    command -v "mkfs.$fs" >/dev/null || echo "mkfs.$fs is not installed"
}

fs_make() {
    local fs=$1 size=${2:-8G} img=$FS_DIR/$1.img loop err=$FS_DIR/$1.err
    FS_MNT=$FS_DIR/$fs
    mkdir -p "$FS_MNT"
    FS_MADE+=("$fs")
    if [ "$fs" = tmpfs ]; then
        mount -t tmpfs -o "size=$size" tmpfs "$FS_MNT" 2>"$err" || { _fs_says "$err" mount; return 1; }
        return 0
    fi
    rm -f "$img"
    truncate -s "$size" "$img"
    loop=$(losetup --find --show "$img" 2>"$err") || { _fs_says "$err" losetup; return 1; }
    case $fs in
        ext4) mkfs.ext4 -q -F "$loop" ;;
        xfs) mkfs.xfs -q -f "$loop" ;;
        btrfs) mkfs.btrfs -q -f "$loop" ;;
    esac >"$err" 2>&1 || { _fs_says "$err" "mkfs.$fs"; return 1; }
    mount "$loop" "$FS_MNT" 2>"$err" || { _fs_says "$err" mount; return 1; }
}

# _fs_says ERRFILE WHAT: FS_WHY is one line: what failed and its first message.
_fs_says() { FS_WHY="$2 failed: $(head -n 1 "$1")"; }

fs_remove() {
    local fs=$1 mnt=$FS_DIR/$1 img=$FS_DIR/$1.img loop i
    if mountpoint -q "$mnt"; then
        # A test's last background process may still be exiting and hold a file open.
        for i in $(seq 50); do
            umount "$mnt" 2>/dev/null && break
            sleep 0.2
        done
        if mountpoint -q "$mnt"; then
            echo "fs: $mnt is still busy; detaching it lazily" >&2
            umount -l "$mnt"
        fi
    fi
    if [ -e "$img" ]; then
        # (A loop device still held by a lazy unmount goes away when it is released.)
        for loop in $(losetup -n -O NAME -j "$img" 2>/dev/null); do
            losetup -d "$loop"
        done
        rm -f "$img"
    fi
    rmdir "$mnt" 2>/dev/null
    rm -f "$FS_DIR/$fs.err"
    return 0
}

fs_remove_all() {
    local fs
    for fs in "${FS_MADE[@]}"; do
        fs_remove "$fs"
    done
    FS_MADE=()
    [ -z "${FS_DIR:-}" ] || rmdir "$FS_DIR" 2>/dev/null
    return 0
}

# _fs_clean_dir DIR: what a killed run left in DIR: mounts, loop devices, images.
_fs_clean_dir() {
    local saved=$FS_DIR fs
    FS_DIR=$1
    for fs in $FS_ALL; do
        fs_remove "$fs"
    done
    rmdir "$FS_DIR" 2>/dev/null
    FS_DIR=$saved
}
