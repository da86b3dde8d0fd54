# fish completion for mirror-img(1).
# Written by hand from the argp tables in cli/; tests/docs.bats checks that every long
# option `mirror-img SUB --help` prints appears here.

set -l __mi_cmds cancel checksum compare complete copy follow info journal pause resume run set-speed status

complete -c mirror-img -f

# Subcommands.
complete -c mirror-img -n "not __fish_seen_subcommand_from $__mi_cmds" -a cancel -d 'Stop a job now (the target is not consistent)'
complete -c mirror-img -n "not __fish_seen_subcommand_from $__mi_cmds" -a checksum -d 'Print a block-based hash of what an image reads as'
complete -c mirror-img -n "not __fish_seen_subcommand_from $__mi_cmds" -a compare -d 'Compare two images (exit 0 same, 1 different, 2 error)'
complete -c mirror-img -n "not __fish_seen_subcommand_from $__mi_cmds" -a complete -d 'Finish a follow job (--pivot: move the writers to the target)'
complete -c mirror-img -n "not __fish_seen_subcommand_from $__mi_cmds" -a copy -d 'Mirror an image offline (SRC to DST)'
complete -c mirror-img -n "not __fish_seen_subcommand_from $__mi_cmds" -a follow -d 'Mirror an image while programs write it'
complete -c mirror-img -n "not __fish_seen_subcommand_from $__mi_cmds" -a info -d "Show an image's format, size, allocation and backing chain"
complete -c mirror-img -n "not __fish_seen_subcommand_from $__mi_cmds" -a journal -d 'Inspect a journal: status, dump of recent writes, reset'
complete -c mirror-img -n "not __fish_seen_subcommand_from $__mi_cmds" -a pause -d 'Pause a job'
complete -c mirror-img -n "not __fish_seen_subcommand_from $__mi_cmds" -a resume -d 'Resume a paused job'
complete -c mirror-img -n "not __fish_seen_subcommand_from $__mi_cmds" -a run -d 'Run a command with the journaling shim on a source image'
complete -c mirror-img -n "not __fish_seen_subcommand_from $__mi_cmds" -a set-speed -d "Change a job's speed limit"
complete -c mirror-img -n "not __fish_seen_subcommand_from $__mi_cmds" -a status -d "Show a running job's state"

# Every subcommand.
complete -c mirror-img -s '?' -l help -d 'Show help'
complete -c mirror-img -n "__fish_seen_subcommand_from $__mi_cmds" -l usage -d 'Show a short usage message'
complete -c mirror-img -s V -l version -d 'Show the version'

# copy and follow (cli/common.c: the options they share).
set -l __mi_copy '__fish_seen_subcommand_from copy follow'
complete -c mirror-img -n $__mi_copy -F
complete -c mirror-img -n $__mi_copy -s f -l format -x -a 'raw qcow2 qcow' -d 'Source format'
complete -c mirror-img -n $__mi_copy -s O -l target-format -x -a 'raw qcow2' -d 'Target format (default: the source\'s)'
complete -c mirror-img -n $__mi_copy -s o -l options -x -d 'qcow2 target options' \
    -a '(__fish_complete_list , "printf \'%s\n\' cluster_size=64K cluster_size=1M compat=0.10 compat=1.1 compression_type=zlib compression_type=zstd preallocation=off preallocation=metadata preallocation=falloc preallocation=full")'
complete -c mirror-img -n $__mi_copy -s c -l compress -d 'Write compressed clusters (qcow2 target)'
complete -c mirror-img -n $__mi_copy -l password-file -r -F -d 'Password of a legacy AES-encrypted image'
complete -c mirror-img -n $__mi_copy -l no-backing -d 'Refuse a source with a backing chain'
complete -c mirror-img -n $__mi_copy -s n -l existing -d 'Write into an existing target'
complete -c mirror-img -n $__mi_copy -l force -d 'Replace an existing target'
complete -c mirror-img -n $__mi_copy -l target-is-zero -d 'The existing target reads as zeros'
complete -c mirror-img -n $__mi_copy -l sync -x -a 'full\t"the whole chain" top\t"the top layer only"' -d 'What to copy'
complete -c mirror-img -n $__mi_copy -s g -l granularity -x -a '512 4K 64K 1M 64M' -d 'Dirty-bitmap chunk size'
complete -c mirror-img -n $__mi_copy -l buf-size -x -a '1M 16M 64M 256M' -d 'Memory for buffers across all workers'
complete -c mirror-img -n $__mi_copy -s j -l threads -x -d 'Worker threads'
complete -c mirror-img -n $__mi_copy -s s -l speed -x -d 'Limit in bytes per second (0 = unlimited)'
complete -c mirror-img -n $__mi_copy -l on-source-error -x -a 'report ignore enospc stop' -d 'Policy for source errors'
complete -c mirror-img -n $__mi_copy -l on-target-error -x -a 'report ignore enospc stop' -d 'Policy for target errors'
complete -c mirror-img -n $__mi_copy -l verify -d 'Read the target back and compare at the end'
complete -c mirror-img -n $__mi_copy -l checksum -d 'copy: hash what is copied while copying and print it'
complete -c mirror-img -n $__mi_copy -l bitmap -x -d 'copy -n: only what the source dirty bitmap marks'
complete -c mirror-img -n $__mi_copy -l bitmaps -d 'copy: carry the persistent bitmaps into the new qcow2'
complete -c mirror-img -n $__mi_copy -l no-offload -d 'copy: read and write every data range (no cloning)'
complete -c mirror-img -n $__mi_copy -l tls-psk-file -r -F -d 'TLS pre-shared keys for nbds:// URIs'
complete -c mirror-img -n $__mi_copy -l tls-certificates -x -a '(__fish_complete_directories)' -d 'TLS certificates directory'
complete -c mirror-img -n $__mi_copy -l connections -x -d 'NBD connections (multi-conn)'
complete -c mirror-img -n $__mi_copy -l incremental -d 'Copy only what the journal saw change since the last run'
complete -c mirror-img -n $__mi_copy -l journal -r -F -d "The shim's journal for SRC"
complete -c mirror-img -n $__mi_copy -s p -l progress -d 'Draw a progress bar'
complete -c mirror-img -n $__mi_copy -l json -d 'Write QMP-shaped JSON events on stdout'
complete -c mirror-img -n $__mi_copy -l socket -r -F -d 'Control socket'
complete -c mirror-img -n $__mi_copy -s v -l verbose -d 'Print the settings in force'
complete -c mirror-img -n $__mi_copy -s q -l quiet -d 'Print nothing but errors'

# follow's own options
set -l __mi_follow '__fish_seen_subcommand_from follow'
complete -c mirror-img -n $__mi_follow -l auto-converge -d 'Slow the writers down while they dirty faster than the target is updated'
complete -c mirror-img -n $__mi_follow -l lease -x -d 'How long writers wait for a follower that stopped answering (2s, 500ms)'

# info
set -l __mi_info '__fish_seen_subcommand_from info'
complete -c mirror-img -n $__mi_info -F
complete -c mirror-img -n $__mi_info -s f -l format -x -a 'raw qcow2 qcow' -d 'Image format'
complete -c mirror-img -n $__mi_info -l json -d 'Print JSON'
complete -c mirror-img -n $__mi_info -l password-file -r -F -d 'Password of a legacy AES-encrypted image'

# checksum
set -l __mi_checksum '__fish_seen_subcommand_from checksum'
complete -c mirror-img -n $__mi_checksum -F
complete -c mirror-img -n $__mi_checksum -s f -l format -x -a 'raw qcow2 qcow' -d 'Image format'
complete -c mirror-img -n $__mi_checksum -s j -l threads -x -d 'Hash with N threads'
complete -c mirror-img -n $__mi_checksum -l json -d 'Print JSON'
complete -c mirror-img -n $__mi_checksum -l password-file -r -F -d 'Password of a legacy AES-encrypted image'

# compare
set -l __mi_compare '__fish_seen_subcommand_from compare'
complete -c mirror-img -n $__mi_compare -F
complete -c mirror-img -n $__mi_compare -s f -l format-a -x -a 'raw qcow2 qcow' -d 'Format of A'
complete -c mirror-img -n $__mi_compare -s F -l format-b -x -a 'raw qcow2 qcow' -d 'Format of B'
complete -c mirror-img -n $__mi_compare -s q -l quiet -d 'Print nothing; the exit status tells'
complete -c mirror-img -n $__mi_compare -s s -l strict -d 'Images of different sizes differ'

# The control clients take the job's SOCKET.
complete -c mirror-img -n '__fish_seen_subcommand_from complete cancel pause resume set-speed status' -F
complete -c mirror-img -n '__fish_seen_subcommand_from complete' -l pivot -d 'Move the writers onto the target'
complete -c mirror-img -n '__fish_seen_subcommand_from status' -l json -d "Print the job's state as JSON"

# run --journal J SRC -- CMD [ARG...]
set -l __mi_run '__fish_seen_subcommand_from run'
complete -c mirror-img -n $__mi_run -F
complete -c mirror-img -n $__mi_run -l journal -r -F -d 'The journal file'
complete -c mirror-img -n $__mi_run -s g -l granularity -x -a '512 4K 64K 1M' -d 'Bytes per journal chunk'
complete -c mirror-img -n $__mi_run -l max-size -x -d 'Largest source size the journal covers'

# journal status|dump|reset J
set -l __mi_journal '__fish_seen_subcommand_from journal'
complete -c mirror-img -n "$__mi_journal; and not __fish_seen_subcommand_from status dump reset" -x -a 'status dump reset'
complete -c mirror-img -n "$__mi_journal; and __fish_seen_subcommand_from status dump reset" -F
complete -c mirror-img -n $__mi_journal -l json -d 'Print JSON'
complete -c mirror-img -n $__mi_journal -s n -l last -x -d 'dump: only the last N records'
