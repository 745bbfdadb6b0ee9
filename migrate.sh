#!/bin/sh
# Run the migration CLI: ./migrate.sh [status | --dry-run | --target 001 | --verbose ...]
#
# All arguments go to `python -m cex_arbitrage.db.migrate`, and its exit code
# comes back unchanged. The interpreter is the .venv next to this script if
# there is one, else python3. The working directory is left alone, so
# ./config.yaml is looked up where you run the command, not here.
set -eu

script=$0
# Follow a symlink (e.g. /usr/local/bin/migrate.sh -> the checkout) to the checkout.
while [ -L "$script" ]; do
    target=$(readlink "$script")
    case $target in
        /*) script=$target ;;
        *) script=$(dirname -- "$script")/$target ;;
    esac
done
here=$(CDPATH='' cd -- "$(dirname -- "$script")" && pwd -P)

if [ -x "$here/.venv/bin/python" ]; then
    python=$here/.venv/bin/python
else
    python=python3
    # No venv: let python3 import the package from this checkout.
    if [ -d "$here/cex_arbitrage" ]; then
        PYTHONPATH=$here${PYTHONPATH:+:$PYTHONPATH}
        export PYTHONPATH
    fi
fi

exec "$python" -m cex_arbitrage.db.migrate "$@"
