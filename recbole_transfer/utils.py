"""Small helpers every layer may use: "unset" values, paths, dataset lists and atomic writing.

Paths are resolved from the working directory (or given absolute), never from where the package is installed.
Only the standard library is imported here (torch only inside ``atomic_torch_save``), so converters that must run
without torch can use the same atomic writer.
"""

import os
import shutil
import tempfile


def is_unset(value):
    """Whether a path-like config value means "nothing" (None, '', none, null, ~)."""
    return value is None or str(value).strip().lower() in ("", "none", "~", "null")


def find_path(path, folder=False):
    """``path`` (absolute, or relative to the working directory) if it exists as a file (a folder when
    ``folder``), else None."""
    exists = os.path.isdir if folder else os.path.isfile
    return str(path) if exists(str(path)) else None


def dataset_names(dataset):
    """``'A,B,C'`` or ``['A', 'B', 'C']`` -> ``['A', 'B', 'C']`` (several names mean several domains)."""
    if isinstance(dataset, (list, tuple)):
        return [str(name).strip() for name in dataset if str(name).strip()]
    return [name.strip() for name in str(dataset).split(",") if name.strip()]


# --- atomic writing ---------------------------------------------------------------------------------------------
# Everything the package writes goes to a temporary beside its target first and is renamed into place, so a
# failure or an interruption never leaves half a file (or half a folder) where a reader looks.


def current_umask():
    """The process umask (reading it means setting it, so it is set back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _temporary_file(path, suffix=""):
    """An empty temporary file in ``path``'s folder (created if needed), with the mode a plain ``open()`` gives
    (mkstemp makes 0600 files)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=folder, prefix=f".{os.path.basename(path)}.", suffix=suffix + ".tmp"
    )
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())
    return tmp


class AtomicFiles:
    """Several files that appear together: ``write`` / ``write_with`` fill temporaries beside their targets,
    ``commit`` renames all of them into place, ``abort`` deletes them. As a context manager it commits on success
    and aborts on an exception."""

    def __init__(self):
        self.pending = []

    def write_with(self, path, write, suffix=""):
        """``write(tmp_path)`` fills the temporary that becomes ``path`` on commit."""
        tmp = _temporary_file(path, suffix)
        self.pending.append((tmp, path))
        write(tmp)

    def write(self, path, chunks):
        """Text ``chunks`` (an iterable of str) as UTF-8 with ``\\n`` line ends."""

        def write_chunks(tmp):
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                for chunk in chunks:
                    f.write(chunk)

        self.write_with(path, write_chunks)

    def commit(self):
        for tmp, path in self.pending:
            os.replace(tmp, path)
        self.pending = []

    def abort(self):
        for tmp, _ in self.pending:
            if os.path.exists(tmp):
                os.remove(tmp)
        self.pending = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


def atomic_write(path, write, suffix=""):
    """``write(tmp_path)`` into a temporary file beside ``path``, then rename it to ``path``."""
    with AtomicFiles() as files:
        files.write_with(path, write, suffix)


def atomic_write_text(path, text):
    with AtomicFiles() as files:
        files.write(path, [text])


def atomic_torch_save(obj, path):
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp), suffix=".pth")


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by this plugin (safe mode: tensors and plain values only)."""
    import torch

    return torch.load(path, map_location=map_location, weights_only=True)


def atomic_folder(write, folder):
    """``write(tmp_folder)`` then swap it in place of ``folder``: readers see the old folder or the new one."""
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700 folders
        old = None
        if os.path.exists(folder):
            old = tempfile.mkdtemp(prefix=".old-", dir=parent)
            os.replace(folder, os.path.join(old, "x"))
        os.replace(tmp, folder)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
