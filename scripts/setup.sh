#!/usr/bin/env bash
# First-run setup, called by `make setup` (and so by `make serve` and `make test`).
#
#  1. The system packages the process sandbox needs: bubblewrap, Node.js and the
#     system Python (/usr/bin/python3); redis-server for the cluster and state tests
#     and the bench. As root with apt-get they are installed;
#     otherwise the script says what to install and fails.
#     runsc (gVisor, the gvisor backend) is installed the same way when it is missing; it is
#     optional: without it, setup says so and `backend = auto` skips gvisor.
#  2. A virtualenv in .venv (Python >= 3.11) with this package installed editable,
#     with its dev and microvm extras (the tests cover the microVM backend too).
#
# Re-running is fast and harmless: step 1 only looks for three files, and step 2
# is skipped while .venv/.setup-stamp matches pyproject.toml (content hash).
#
# Environment:
#   PYTHON=python3.12            interpreter for the virtualenv (default: the first >= 3.11
#                                of /usr/bin/python3, python3, python3.13, python3.12,
#                                python3.11: the distribution's first, the sandbox's own,
#                                which distributions build static with PGO and LTO; a
#                                default source build, shared libpython and no PGO, as
#                                pyenv makes, ran the server ~15% slower, see bench/README.md)
#   VENV=.venv                   where the virtualenv lives
#   SETUP_APT=auto|yes|no        install missing system packages with apt-get
#                                (auto: when running as root and apt-get exists)
#   SETUP_SKIP_SYSTEM=1          do not check system packages at all
#   SERVICE_SANDBOX__PYTHON, SERVICE_SANDBOX__NODE
#                                the sandbox interpreters, as in the settings
#                                (default /usr/bin/python3, and node found on PATH)
set -euo pipefail

cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
STAMP="$VENV/.setup-stamp"
SETUP_APT=${SETUP_APT:-auto}
SANDBOX_PYTHON=${SERVICE_SANDBOX__PYTHON:-/usr/bin/python3}
PYTHON_CANDIDATES="/usr/bin/python3 python3 python3.13 python3.12 python3.11"
SANDBOX_NODE=${SERVICE_SANDBOX__NODE:-node}

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

use_apt() {
    case "$SETUP_APT" in
        yes) return 0 ;;
        no) return 1 ;;
        *) [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 ;;
    esac
}

apt_install() {
    say "installing with apt-get: $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Debian package names of whatever the sandbox needs and is missing.
missing_system_packages() {
    local missing=()
    command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)  # cluster tests, bench
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)  # the multi-host cluster test (netns)
    # prlimit and setpriv start each process sandbox (essential on Debian: here for others)
    { [ -x /usr/bin/prlimit ] || [ -x /bin/prlimit ]; } || missing+=(util-linux)
    { [ -x /usr/bin/setpriv ] || [ -x /bin/setpriv ]; } || missing+=(util-linux)
    command -v "$SANDBOX_NODE" >/dev/null 2>&1 || missing+=(nodejs)
    # npm installs JavaScript actors' dependencies (Debian packages it apart from nodejs)
    [ -x "$(dirname "$(command -v "$SANDBOX_NODE" || echo "$SANDBOX_NODE")")/npm" ] || command -v npm >/dev/null 2>&1 || missing+=(npm)
    [ -x "$SANDBOX_PYTHON" ] || missing+=(python3)
    echo "${missing[@]}"
}

# gVisor's runsc: optional (the gvisor backend), installed with apt when we may. A failed
# attempt is remembered in $VENV, so that every later `make` does not retry apt-get.
ensure_runsc() {
    command -v runsc >/dev/null 2>&1 && return 0
    [ -f "$VENV/.runsc-unavailable" ] && return 0
    if use_apt && apt_install runsc && command -v runsc >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p "$VENV" && touch "$VENV/.runsc-unavailable"
    say "runsc (gVisor) is not installed: the gvisor backend is unavailable (apt-get install runsc)"
}

ensure_system_packages() {
    [ "${SETUP_SKIP_SYSTEM:-0}" = 1 ] && return 0
    ensure_runsc
    local missing
    missing=$(missing_system_packages)
    [ -z "$missing" ] && return 0
    if use_apt; then
        # shellcheck disable=SC2086  # one word per package
        apt_install $missing
        missing=$(missing_system_packages)
        [ -z "$missing" ] && return 0
        die "still missing after apt-get: $missing (the sandbox expects $SANDBOX_PYTHON, $SANDBOX_NODE and bwrap on PATH; the tests redis-server and ip)"
    fi
    {
        echo "setup: the sandbox needs system packages that are missing: $missing"
        echo "setup: install them, then run make again:"
        echo
        echo "    sudo apt-get install $missing"
        echo
        echo "setup: (other distributions: install bubblewrap, Node.js and Python 3.11+ so that"
        echo "setup:  bwrap is on PATH and $SANDBOX_NODE and $SANDBOX_PYTHON exist;"
        echo "setup:  SETUP_SKIP_SYSTEM=1 skips this check)"
    } >&2
    exit 1
}

is_new_enough() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

find_python() {
    local candidate
    for candidate in ${PYTHON:-$PYTHON_CANDIDATES}; do
        if command -v "$candidate" >/dev/null 2>&1 && is_new_enough "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

create_venv() {
    local python
    python=$(find_python) || die "no Python >= 3.11 found (tried ${PYTHON:-$PYTHON_CANDIDATES}); set PYTHON=/path/to/python3.11"
    if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        # Debian splits venv/ensurepip out of python3 into python3-venv.
        if use_apt; then
            apt_install python3-venv
        else
            die "$python cannot create virtualenvs; install it: sudo apt-get install python3-venv"
        fi
    fi
    say "creating $VENV with $("$python" --version 2>&1)"
    "$python" -m venv "$VENV"
}

pyproject_hash() {
    sha256sum pyproject.toml | cut -d' ' -f1
}

ensure_venv() {
    local want
    want=$(pyproject_hash)
    if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
        return 0
    fi
    if [ -x "$VENV/bin/python" ] && ! is_new_enough "$VENV/bin/python"; then
        die "$VENV uses $("$VENV/bin/python" --version 2>&1), this project needs >= 3.11; remove $VENV and re-run"
    fi
    [ -x "$VENV/bin/python" ] || create_venv
    say "installing the package and its dev tools into $VENV (pip install -e '.[dev,microvm]')"
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    # pip's output (build warnings and all) goes to a log, shown only when it fails.
    local log="$VENV/setup.log"
    if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
           "$VENV/bin/python" -m pip install -q -e '.[dev,microvm]'; } >"$log" 2>&1; then
        cat "$log" >&2
        die "pip install failed (log above, also in $log)"
    fi
    echo "$want" >"$STAMP"
    say "done"
}

ensure_system_packages
ensure_venv
