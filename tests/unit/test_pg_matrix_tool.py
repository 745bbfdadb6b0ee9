"""The version-matrix tool's own logic, without fetching or starting anything."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.pg_matrix import _arguments
from tests.support.pg_servers import PINNED, SUPPORTED_MAJORS, _hydrate_symlinks


def test_majors_lead_the_arguments_and_the_rest_goes_to_pytest() -> None:
    assert _arguments([]) == (list(SUPPORTED_MAJORS), [])
    assert _arguments(["13", "17", "-x", "-k", "boot"]) == ([13, 17], ["-x", "-k", "boot"])
    assert _arguments(["-x"]) == (list(SUPPORTED_MAJORS), ["-x"])


def test_every_supported_major_has_a_pinned_package_of_that_major() -> None:
    for major in SUPPORTED_MAJORS:
        assert PINNED[major].split(".")[0] == str(major)


def test_the_packages_library_links_are_created_relative_and_kept(tmp_path: Path) -> None:
    lib = tmp_path / "native" / "lib"
    lib.mkdir(parents=True)
    (lib / "libicuuc.so.60.2").write_text("lib")
    (lib / "libz.so.1").write_text("already there")
    links = [
        {"source": "native/lib/libicuuc.so.60.2", "target": "native/lib/libicuuc.so.60"},
        {"source": "native/lib/libicuuc.so.60.2", "target": "native/lib/libz.so.1"},
    ]
    (tmp_path / "native" / "pg-symlinks.json").write_text(json.dumps(links))
    _hydrate_symlinks(tmp_path)
    assert (lib / "libicuuc.so.60").read_text() == "lib"
    assert not (lib / "libicuuc.so.60").readlink().is_absolute()
    assert (lib / "libz.so.1").read_text() == "already there"
