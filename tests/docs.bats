#!/usr/bin/env bats
# docs.bats: the man page and the shell completions follow the argp tables: every long
# option that `mirror-img SUB --help` prints, for every subcommand `mirror-img --help`
# lists, appears in man/mirror-img.1 and in the bash, zsh and fish completions; the man
# page renders without a warning; the completions load and complete.

load helpers

MAN=$TOP/man/mirror-img.1
BASH_COMP=$TOP/completions/mirror-img.bash
ZSH_COMP=$TOP/completions/_mirror-img
FISH_COMP=$TOP/completions/mirror-img.fish

# Subcommands whose section of the man page their authors have not written yet (the live
# mirroring commands, to go under LIVE MIRRORING).  Remove a name once its section exists.
MAN_PENDING=" "

# subcommands: the names `mirror-img --help` lists under "Commands:".
subcommands() {
    "$MI" --help 2>/dev/null | awk '/^Commands:/ { f = 1; next } f && /^  [a-z]/ { print $1 } f && /^$/ { exit }'
}

# long_options SUB: the long options SUB's --help lists (option lines only, not prose;
# stderr is not ours to judge here: options.bats checks that --help is clean).
long_options() {
    "$MI" "$1" --help 2>/dev/null | sed -nE 's/^ +(-[^ ,], )?(--[a-z0-9][a-z0-9-]*).*/\2/p' | sort -u
}

# man_text: the man page's source with \- and font escapes removed, so "--sync" is greppable.
man_text() { sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' -e 's/\\c$//' "$MAN"; }

# missing_in FILE_TEXT_CMD SUB...: print "SUB OPTION" for each long option of each SUB
# that the text (read from stdin) lacks.
missing_in() {
    local text sub opt
    text=$(cat)
    for sub in "$@"; do
        for opt in $(long_options "$sub"); do
            grep -qE -- "${opt}([^a-z0-9-]|\$)" <<<"$text" || echo "$sub $opt"
        done
    done
}

@test "docs: mirror-img --help lists the subcommands and each has options in --help" {
    run subcommands
    assert_success
    assert_line copy
    assert_line info
    assert_line compare
    local sub opts
    for sub in $(subcommands); do
        opts=$(long_options "$sub" || true)
        [[ $'\n'$opts$'\n' == *$'\n--help\n'* ]] || fail "$sub --help lists no --help: $opts"
    done
}

@test "docs: the man page renders with groff -man -ww without a warning" {
    requires groff
    run groff -man -ww -z "$MAN"
    assert_success
    assert_output ""
}

@test "docs: man -l reads the man page" {
    requires man
    run env MANWIDTH=80 man -l "$MAN"
    assert_success
    assert_output --partial "EXIT STATUS"
    assert_output --partial "ENVIRONMENT"
    assert_output --partial "MIRROR_IMG_SHIM"
    assert_output --partial "EXAMPLES"
}

@test "docs: every long option of every subcommand is in the man page" {
    local subs=() sub
    for sub in $(subcommands); do
        [[ $MAN_PENDING == *" $sub "* ]] || subs+=("$sub")
    done
    run missing_in "${subs[@]}" < <(man_text)
    assert_success
    assert_output ""
}

@test "docs: every subcommand has its section in the man page" {
    local sub missing=
    for sub in $(subcommands); do
        [[ $MAN_PENDING == *" $sub "* ]] && continue
        grep -qE "^\.SS \"?$sub( |\"|$)" "$MAN" || missing="$missing $sub"
    done
    [ -z "$missing" ] || fail "no .SS section for:$missing"
}

@test "docs: the man page has the sections scripts and users rely on" {
    local s
    for s in NAME SYNOPSIS DESCRIPTION "EXIT STATUS" ENVIRONMENT FILES EXAMPLES \
        "JSON EVENTS" "CONTROL SOCKET" "ERROR POLICIES" "NBD URIS" "FOR QEMU USERS" \
        "LIVE MIRRORING" "SEE ALSO"; do
        grep -qE "^\.SH \"?$s\"?\$" "$MAN" || fail "no section $s"
    done
    run man_text
    assert_output --partial "BLOCK_JOB_COMPLETED"
    assert_output --partial "bytes_copied"
    assert_output --partial "duration_ms"
    assert_output --partial "mirror-img-journal (5)"
}

@test "docs: every long option of every subcommand is in each completion file" {
    local f subs
    subs=$(subcommands)
    for f in "$BASH_COMP" "$ZSH_COMP" "$FISH_COMP"; do
        if [ "$f" = "$FISH_COMP" ]; then
            # fish spells long options as "-l NAME"
            run missing_in $subs < <(sed -E 's/-l ([a-z0-9-]+)/--\1/g' "$f")
        else
            run missing_in $subs < <(cat "$f")
        fi
        assert_success
        [ -z "$output" ] || fail "$(basename "$f") lacks: $output"
    done
}

@test "docs: every subcommand is completed by each completion file" {
    local f sub
    for f in "$BASH_COMP" "$ZSH_COMP" "$FISH_COMP"; do
        for sub in $(subcommands); do
            grep -qE "(^|[ '\"])$sub([ :'\"]|\$)" "$f" || fail "$(basename "$f") lacks the subcommand $sub"
        done
    done
}

@test "completion: bash loads it and completes subcommands, options and values" {
    run bash -c "source '$BASH_COMP' && complete -p mirror-img"
    assert_success
    assert_output "complete -F _mirror_img mirror-img"

    # c() WORD...: complete the last word of the command line WORD...
    local c='source "'"$BASH_COMP"'"; c() { COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _mirror_img; echo "${COMPREPLY[*]}"; }'
    run bash -c "$c; c mirror-img copy --sy"
    assert_output "--sync="
    run bash -c "$c; c mirror-img co"
    assert_output "compare complete copy"
    # "--sync=" as bash splits it: "--sync" "=" ""
    run bash -c "$c; c mirror-img copy --sync = ''"
    assert_output "full top"
    run bash -c "$c; c mirror-img copy --on-target-error = en"
    assert_output "enospc"
    run bash -c "$c; c mirror-img copy -O ''"
    assert_output "raw qcow2"
    run bash -c "$c; c mirror-img copy -f ''"
    assert_output "raw qcow2 qcow"
    run bash -c "$c; c mirror-img copy -o compression_type = z"
    assert_output "zlib zstd"
    run bash -c "$c; c mirror-img copy -o cluster_size=64K,pre"
    assert_output "cluster_size=64K,preallocation="
    run bash -c "$c; c mirror-img inf --j"
    assert_output "--json"
    run bash -c "$c; c mirror-img journal ''"
    assert_output "status dump reset"
    run bash -c "cd '$TOP'; $c; c mirror-img copy Makef"
    assert_output "Makefile"
}

@test "completion: zsh parses and loads it" {
    requires zsh
    run zsh -n "$ZSH_COMP"
    assert_success
    run zsh -fc "autoload -U compinit; compinit -u -D; source '$ZSH_COMP'; print -r -- \$_comps[mirror-img]"
    assert_success
    assert_output "_mirror-img"
    run zsh -fc "fpath=('$TOP/completions' \$fpath); autoload -U compinit; compinit -u -D; print -r -- \$_comps[mirror-img]"
    assert_success
    assert_output "_mirror-img"
}

# zsh_complete LINE: what an interactive zsh lists after LINE and a Tab.
zsh_complete() {
    cat > "$T/cap.zsh" <<'EOF'
zmodload zsh/zpty
zpty z "zsh -f -i"
zpty -w z "PROMPT='>' ; fpath=($1 \$fpath); autoload -U compinit; compinit -u -D; unsetopt zle_bracketed_paste 2>/dev/null; zstyle ':completion:*' list-prompt ''; LISTMAX=1000"
zpty -w z 'echo READ''Y'
zpty -r z line '*READY*'
zpty -w -n z "$2"$'\t'
out=
for i in {1..20}; do
  zpty -r -t z chunk && out+=$chunk
  sleep 0.1
done
print -r -- "$out"
zpty -d z
EOF
    timeout 30 zsh -f "$T/cap.zsh" "$TOP/completions" "$1" | tr -d '\r' | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g'
}

@test "completion: zsh completes subcommands and values" {
    requires zsh
    run zsh_complete "mirror-img co"
    assert_output --regexp "compare +-- compare two images"
    assert_output --regexp "copy +-- mirror an image offline"
    run zsh_complete "mirror-img copy --sync="
    assert_output --regexp "full +-- the whole chain"
    assert_output --regexp "top +-- the top layer only"
}

@test "completion: fish parses it and completes subcommands, options and values" {
    requires fish
    run fish -n "$FISH_COMP"
    assert_success
    run fish -c "source '$FISH_COMP'; complete -C'mirror-img co'"
    assert_success
    assert_line --regexp "^compare"$'\t'
    assert_line --regexp "^copy"$'\t'
    run fish -c "source '$FISH_COMP'; complete -C'mirror-img copy --sync='"
    assert_line --regexp "^--sync=full"
    assert_line --regexp "^--sync=top"
    run fish -c "source '$FISH_COMP'; complete -C'mirror-img copy --on-target-error '"
    assert_line --regexp "^enospc"
    run fish -c "source '$FISH_COMP'; complete -C'mirror-img info --j'"
    assert_line --regexp "^--json"
}
