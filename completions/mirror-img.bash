# bash completion for mirror-img(1).
# Written by hand from the argp tables in cli/; tests/docs.bats checks that every long
# option `mirror-img SUB --help` prints appears here.  Options that take a value end in
# '=' below.

_mirror_img_cmds="cancel checksum compare complete copy follow info journal pause resume run set-speed status"

_mirror_img_std="--help --usage --version"
# cli/common.c: the options copy shares with follow.
_mirror_img_common="--format= --target-format= --options= --compress --password-file= --no-backing
 --existing --force --target-is-zero --sync= --granularity= --buf-size= --no-offload --threads= --speed=
 --on-source-error= --on-target-error= --verify --checksum --bitmap= --bitmaps --tls-psk-file= --tls-certificates=
 --connections= --incremental --journal= --progress --json --socket= --verbose --quiet"
_mirror_img_common_short="-f -O -o -c -n -g -j -s -p -v -q"

# _mirror_img_opts SUB: the long and short options of SUB.
_mirror_img_opts() {
    case $1 in
    copy) echo "$_mirror_img_common $_mirror_img_common_short" ;;
    follow) echo "$_mirror_img_common $_mirror_img_common_short --lease= --auto-converge" ;;
    info) echo "--format= --json --password-file= -f" ;;
    compare) echo "--format-a= --format-b= --quiet --strict -f -F -q -s" ;;
    checksum) echo "--format= --threads= --json --password-file= -f -j" ;;
    complete) echo "--pivot" ;;
    status) echo "--json" ;;
    run) echo "--journal= --granularity= --max-size= -g" ;;
    journal) echo "--json --last= -n" ;;
    esac
    echo "$_mirror_img_std"
}

# _mirror_img_value SUB OPT CUR: complete the value of OPT; returns 1 when OPT takes none.
_mirror_img_value() {
    local sub=$1 opt=$2 cur=$3
    case $sub:$opt in
    *:--format | *:--format-a | *:--format-b | copy:-f | follow:-f | info:-f | compare:-f | compare:-F)
        COMPREPLY=($(compgen -W "raw qcow2 qcow" -- "$cur")) ;;
    *:--target-format | copy:-O | follow:-O)
        COMPREPLY=($(compgen -W "raw qcow2" -- "$cur")) ;;
    *:--sync)
        COMPREPLY=($(compgen -W "full top" -- "$cur")) ;;
    *:--on-source-error | *:--on-target-error)
        COMPREPLY=($(compgen -W "report ignore enospc stop" -- "$cur")) ;;
    *:--options | copy:-o | follow:-o)
        _mirror_img_create_opts "$cur" ;;
    *:--password-file | *:--tls-psk-file | *:--socket | *:--journal)
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -f -- "$cur")) ;;
    *:--tls-certificates)
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -d -- "$cur")) ;;
    *:--granularity | *:--buf-size | *:--speed | *:--max-size | copy:-g | copy:-s | follow:-g | follow:-s | run:-g)
        COMPREPLY=($(compgen -W "512 4K 64K 1M 16M 64M" -- "$cur")) ;;
    *:--threads | *:--connections | *:--last | *:--lease | copy:-j | follow:-j | journal:-n)
        COMPREPLY=() ;;
    *) return 1 ;;
    esac
    return 0
}

# -o KEY=VALUE,...: complete the key, or the value of the key being typed.
_mirror_img_create_opts() {
    local cur=$1 head= item=$1
    if [[ $cur == *,* ]]; then
        head=${cur%,*},
        item=${cur##*,}
    fi
    local words
    case $item in
    cluster_size=*) words="cluster_size=512 cluster_size=4K cluster_size=64K cluster_size=1M cluster_size=2M" ;;
    compat=*) words="compat=0.10 compat=1.1" ;;
    compression_type=*) words="compression_type=zlib compression_type=zstd" ;;
    preallocation=*) words="preallocation=off preallocation=metadata preallocation=falloc preallocation=full" ;;
    *) words="cluster_size= compat= compression_type= preallocation="; compopt -o nospace 2>/dev/null ;;
    esac
    local w
    COMPREPLY=()
    for w in $words; do
        [[ $w == "$item"* ]] && COMPREPLY+=("$head$w")
    done
}

_mirror_img() {
    local cword=$COMP_CWORD cur=${COMP_WORDS[COMP_CWORD]} prev= sub= i
    COMPREPLY=()
    # COMP_WORDBREAKS splits "--sync=to" into "--sync" "=" "to": glue the pieces of the
    # current argument back together, complete the whole argument, and hand back only the
    # part after the last break, which is what readline replaces.
    local typed=$cur
    [[ $cur == = ]] && typed=
    local j=$cword
    while ((j > 2)) && [[ ${COMP_WORDS[j]} == = || ${COMP_WORDS[j - 1]} == = ]]; do
        cur=${COMP_WORDS[j - 1]}$cur
        ((j--))
    done
    ((j > 0)) && prev=${COMP_WORDS[j - 1]}
    local glued=${cur%"$typed"}
    _mirror_img_complete "$j" "$cur" "$prev"
    if [[ -n $glued ]]; then
        COMPREPLY=("${COMPREPLY[@]#"$glued"}")
    fi
    return 0
}

# _mirror_img_complete CWORD CUR PREV: fill COMPREPLY for the whole argument CUR.
_mirror_img_complete() {
    local cword=$1 cur=$2 prev=$3 sub i
    if ((cword == 1)); then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "--help --version" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$_mirror_img_cmds" -- "$cur"))
        fi
        return 0
    fi
    sub=${COMP_WORDS[1]}
    # A unique prefix names a subcommand, as on the command line.
    local c m=0 full=
    for c in $_mirror_img_cmds; do
        [[ $c == "$sub" ]] && { full=$c; m=1; break; }
        [[ $c == "$sub"* ]] && { full=$c; ((m++)); }
    done
    ((m == 1)) && sub=$full

    # run SRC -- CMD ARG...: after "--", complete the command, then files.
    if [[ $sub == run ]]; then
        for ((i = 2; i < cword; i++)); do
            if [[ ${COMP_WORDS[i]} == -- ]]; then
                compopt -o filenames 2>/dev/null
                if ((i == cword - 1)); then
                    COMPREPLY=($(compgen -c -- "$cur" | sort -u))
                else
                    COMPREPLY=($(compgen -f -- "$cur"))
                fi
                return 0
            fi
        done
    fi

    # --opt=value written as one word (when '=' is not a word break).
    if [[ $cur == --*=* ]]; then
        local o=${cur%%=*} v=${cur#*=}
        if _mirror_img_value "$sub" "$o" "$v"; then
            COMPREPLY=("${COMPREPLY[@]/#/$o=}")
            return 0
        fi
    fi
    # The value of the previous option.
    if [[ -n $prev ]] && _mirror_img_value "$sub" "$prev" "$cur"; then
        return 0
    fi

    if [[ $cur == -* ]]; then
        local opts
        opts=$(_mirror_img_opts "$sub")
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *= ]]; then
            compopt -o nospace 2>/dev/null
        fi
        return 0
    fi

    case $sub in
    journal)
        local n=0
        for ((i = 2; i < cword; i++)); do
            [[ ${COMP_WORDS[i]} == -* ]] || ((n++))
        done
        if ((n == 0)); then
            COMPREPLY=($(compgen -W "status dump reset" -- "$cur"))
            return 0
        fi ;;
    set-speed)
        local n=0
        for ((i = 2; i < cword; i++)); do
            [[ ${COMP_WORDS[i]} == -* ]] || ((n++))
        done
        ((n >= 1)) && return 0 ;;
    esac
    compopt -o filenames 2>/dev/null
    COMPREPLY=($(compgen -f -- "$cur"))
    return 0
}

complete -F _mirror_img mirror-img
