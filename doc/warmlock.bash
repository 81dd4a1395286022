# bash completion for warmlock(1) and warmlockd(8).
#
# The commands and options come from the programs' own --help (read once per shell), so
# the completion follows the installed version. Needs nothing but bash; with the
# bash-completion package it is loaded on demand from its completions directory, else
# source this file from ~/.bashrc.

_warmlock_help_cache=
_warmlockd_opts_cache=

# The "Commands:" section of `warmlock --help`, one "NAME OPTIONS..." line per command.
_warmlock_commands()
{
    if [[ -z $_warmlock_help_cache ]]; then
        _warmlock_help_cache=$("${1:-warmlock}" --help 2>/dev/null | awk '
            /^Commands:/ { on = 1; next }
            on && /^[^ ]/ { on = 0 }
            on && /^  [a-z]/ {
                line = $1
                for (i = 2; i <= NF; i++) {
                    w = $i; gsub(/[][]/, "", w)
                    if (w ~ /^--[a-z-]+$/) line = line " " w
                    else if (w !~ /^[A-Z.]+$/ && w != "--" && w != "S" && w != "N") break
                }
                print line
            }')
    fi
    printf '%s\n' "$_warmlock_help_cache"
}

_warmlock()
{
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local prog=${COMP_WORDS[0]} cmd= i w opts
    COMPREPLY=()

    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        case $w in
            --shm) ((i++)) ;;
            --) [[ $cmd == exec ]] && { COMPREPLY=($(compgen -c -- "$cur")); return; } ;;
            -*) ;;
            *) [[ -z $cmd ]] && cmd=$w ;;
        esac
    done
    case $prev in
        --shm)
            COMPREPLY=($(compgen -W "$(cd /dev/shm 2>/dev/null && printf '/%s\n' warmlock* 2>/dev/null)" -- "$cur"))
            return ;;
        --warm-sql) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --timeout|--max-age|--epoch) return ;;
    esac
    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "--shm --help --version" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$(_warmlock_commands "$prog" | cut -d' ' -f1)" -- "$cur"))
        fi
        return
    fi
    if [[ $cur == -* ]]; then
        opts=$(_warmlock_commands "$prog" | awk -v c="$cmd" '$1 == c { $1 = ""; print }')
        COMPREPLY=($(compgen -W "$opts --shm --help" -- "$cur"))
    fi
}

_warmlockd()
{
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    COMPREPLY=()
    case $prev in
        --config|--warm-sql) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --target|--interval|--warm-timeout|--shm|--mode|--notify-fd) return ;;
    esac
    if [[ -z $_warmlockd_opts_cache ]]; then
        _warmlockd_opts_cache=$("${COMP_WORDS[0]}" --help 2>/dev/null |
            grep -o -- '--[a-z][a-z-]*' | sort -u)
    fi
    COMPREPLY=($(compgen -W "$_warmlockd_opts_cache" -- "$cur"))
}

complete -F _warmlock warmlock
complete -F _warmlockd warmlockd
