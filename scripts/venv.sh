# Sourced by the scripts that install fcgiserve or its test tools: a virtual environment of the project's own,
# so that nothing is installed into the interpreter itself (Debian 12 and Ubuntu 23.04+ mark their python3
# "externally managed", PEP 668, and refuse `pip install` there).
# Needs ensure_debs (scripts/debs.sh) sourced first.

# make_venv DIR PYTHON: make DIR a virtual environment of the interpreter PYTHON with pip in it, reusing it
# when PYTHON made it and recreating it when another interpreter (or another version of it) did.
# Sets VENV_PYTHON to DIR's interpreter.
make_venv() {
    local dir=$1 python=$2 want have=""
    local identify='import sys; print(sys.base_prefix, sys.version.split()[0], sys.implementation.cache_tag)'
    want=$("$python" -c "$identify") || { echo "cannot run the interpreter '$python'" >&2; return 1; }
    if [ -x "$dir/bin/python" ]; then
        have=$("$dir/bin/python" -c "$identify" 2>/dev/null) || have=""
    fi
    VENV_PYTHON=$dir/bin/python
    if [ -n "$have" ] && [ "$have" = "$want" ] && "$VENV_PYTHON" -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    [ -z "$have" ] || echo "$dir was made by another interpreter ($have): recreating it for $python" >&2
    rm -rf "$dir"
    # Debian's python3 lacks venv's ensurepip until python3-venv is installed.
    if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        case $("$python" -c 'import sys; print(sys.base_prefix)') in
            /usr) ensure_debs python3-venv "python$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv" ;;
            *) echo "$python has no venv/ensurepip module: install it (Debian: python3-venv)" >&2; return 1 ;;
        esac
    fi
    "$python" -m venv "$dir"
}
