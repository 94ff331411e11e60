"""Bundle archives: write a folder as OUT.tar.gz atomically, and extract one without trusting it.

A bundle archive is one top-level folder of plain files. Anything else — absolute paths, `..`, links,
device files, members outside that folder — is refused before a single byte is written, and extraction
goes through tarfile's "data" filter as a second line of defence.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from edgekit.errors import InputError, VerifyFailed
from edgekit.util import make_readable


def write_archive(folder: Path, dest: Path) -> Path:
    """`dest` (.tar.gz) holding `folder`'s files under one top-level folder; replaced atomically."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", dir=dest.parent)
    os.close(fd)
    top = dest.name.removesuffix(".tar.gz")
    try:
        with tarfile.open(tmp_name, "w:gz") as tar:
            for path in sorted(folder.iterdir()):
                tar.add(path, arcname=f"{top}/{path.name}", recursive=False)
        make_readable(tmp_name)
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return dest


def _check_member(archive: Path, member: tarfile.TarInfo) -> PurePosixPath:
    name = member.name
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise VerifyFailed(f"{archive}: member '{name}' has an absolute path")
    if ".." in path.parts or "\\" in name:
        raise VerifyFailed(f"{archive}: member '{name}' escapes the archive with '..'")
    if member.issym() or member.islnk():
        raise VerifyFailed(f"{archive}: member '{name}' is a link (to '{member.linkname}'); bundles hold plain files")
    if not (member.isfile() or member.isdir()):
        raise VerifyFailed(f"{archive}: member '{name}' is a device, FIFO or other special file")
    return path


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract a bundle archive into `dest` after checking every member; returns the bundle folder."""
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the `with tar:` below
    except (tarfile.TarError, OSError) as exc:
        raise InputError(f"{archive}: not a readable tar archive ({exc})") from exc
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise VerifyFailed(f"{archive}: damaged archive ({exc})") from exc
        paths = [_check_member(archive, m) for m in members]
        files = [p for p, m in zip(paths, members, strict=True) if m.isfile()]
        tops = {p.parts[0] for p in files if len(p.parts) > 1}
        # One folder of plain files, as write_archive makes it: nothing beside or below it to hide payloads in.
        stray = sorted(str(p) for p in files if len(p.parts) != 2)
        if stray or len(tops) != 1:
            found = ", ".join(stray[:3]) if stray else f"top-level folders {', '.join(sorted(tops)) or 'none'}"
            raise VerifyFailed(f"{archive}: not a bundle archive (expected one top-level folder of files; found {found})")
        try:
            tar.extractall(dest, filter="data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise VerifyFailed(f"{archive}: cannot extract ({exc})") from exc
    return dest / tops.pop()
