"""A store on the local file system: the embedded default, and what a shared volume gives."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from loraplane.errors import InvalidArgument, NotFound
from loraplane.storage.base import ObjectStore, check_key


class FileStore(ObjectStore):
    """Objects are files under `root`; writes go to a temp file in the same folder, then rename."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_uri(cls, uri: str) -> FileStore:
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidArgument(f"file store URI {uri!r} must be absolute: file:///path/to/store")
        return cls(Path(unquote(parts.path)))

    @property
    def uri(self) -> str:
        return self.root.as_uri()

    def _path(self, key: str) -> Path:
        """The file of `key`. A symbolic link on the way that leads out of the store is refused: a
        link planted in a shared store must not make the services read or write files elsewhere."""
        path = self.root / check_key(key)
        if not self._inside(path):
            raise InvalidArgument(f"object key {key!r} leads out of the store {self.uri} through a symbolic link")
        return path

    def _inside(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root)

    def _write_atomically(self, path: Path, write: Callable[[BinaryIO], object]) -> Path:
        """Write to a hidden temp file beside `path` and return it, fsynced, for the caller to place."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        return Path(tmp)

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        os.replace(self._write_atomically(path, lambda out: out.write(data)), path)

    def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        with path.open("rb") as src:
            tmp = self._write_atomically(dest, lambda out: shutil.copyfileobj(src, out))
        os.replace(tmp, dest)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._write_atomically(path, lambda out: out.write(data))
        try:
            os.link(tmp, path)  # link() fails if `path` exists: create-only, atomically
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no object {key!r} in {self.uri}") from None

    def download_file(self, key: str, dest: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"no object {key!r} in {self.uri}")
        with src.open("rb") as infile:
            tmp = self._write_atomically(dest, lambda out: shutil.copyfileobj(infile, out))
        os.replace(tmp, dest)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"no object {key!r} in {self.uri}")
        return path.stat().st_size

    def list_keys(self, prefix: str) -> Iterator[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return
        if not self._inside(base):
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".") and self._inside(path):
                yield path.relative_to(self.root).as_posix()

    def list_children(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir() or not self._inside(base):
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and self._inside(p))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
