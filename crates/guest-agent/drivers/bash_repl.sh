# Persistent bash REPL driven by the sandbox agent.
#
# Run as `bash --norc --noprofile bash_repl.sh CELLS_DIR`. The agent writes each cell's code
# to CELLS_DIR/<seq>.sh and its environment (NUL-separated K=V) to CELLS_DIR/<seq>.env,
# then sends "<seq> <nonce>" on fd 3; the answer "<nonce> <status>" goes to fd 4. Cells are
# sourced in this shell, so the working directory, variables and functions carry over;
# `exit` in a cell ends the REPL.
#
# The driver's own names start with __sbx_, it calls builtins explicitly (a session may
# define functions named like them), and it runs with the session's -e/-u/-x/-v options off
# (they are put back for each cell), so the code's settings cannot derail it.

__sbx_cells=$1
set --
BASH_ARGV0=bash
__sbx_flags=
declare -A __sbx_saved=()
declare -A __sbx_unexported=()
# As in an interactive shell, aliases a cell defines work in later cells.
builtin shopt -s expand_aliases

builtin printf '\nready\n' >&4

while IFS=' ' builtin read -r __sbx_seq __sbx_nonce __sbx_rest <&3; do
    [[ -n $__sbx_seq && -n $__sbx_nonce && -z $__sbx_rest ]] || continue

    # The call's variables hold for this call only: remember what each name was.
    __sbx_saved=()
    __sbx_unexported=()
    while IFS= builtin read -r -d '' __sbx_kv; do
        __sbx_k=${__sbx_kv%%=*}
        [[ $__sbx_k =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
        if [[ -z ${__sbx_saved[$__sbx_k]+set} ]]; then
            if [[ -n ${!__sbx_k+set} ]]; then
                __sbx_saved[$__sbx_k]=+${!__sbx_k}
                [[ ${!__sbx_k@a} == *x* ]] || __sbx_unexported[$__sbx_k]=1
            else
                __sbx_saved[$__sbx_k]=-
            fi
        fi
        builtin export "$__sbx_k=${__sbx_kv#*=}" 2>/dev/null
    done <"$__sbx_cells/$__sbx_seq.env"

    # The session's options again, for the cell only; the control pipes are closed for
    # it and everything it starts.
    { [[ $__sbx_flags == *e* ]] && builtin set -e
      [[ $__sbx_flags == *u* ]] && builtin set -u
      [[ $__sbx_flags == *v* ]] && builtin set -v
      [[ $__sbx_flags == *x* ]] && builtin set -x; } 2>/dev/null
    builtin source "$__sbx_cells/$__sbx_seq.sh" 3<&- 4>&-
    { __sbx_status=$? __sbx_flags=$-; builtin set +euxv; } 2>/dev/null

    for __sbx_k in "${!__sbx_saved[@]}"; do
        __sbx_v=${__sbx_saved[$__sbx_k]}
        if [[ $__sbx_v == - ]]; then
            builtin unset -v "$__sbx_k" 2>/dev/null
        else
            builtin export "$__sbx_k=${__sbx_v#+}" 2>/dev/null
            [[ -n ${__sbx_unexported[$__sbx_k]+set} ]] && builtin export -n "$__sbx_k"
        fi
    done

    builtin printf '\n%s %d\n' "$__sbx_nonce" "$__sbx_status" >&4 || builtin exit 0
done
builtin exit 0
