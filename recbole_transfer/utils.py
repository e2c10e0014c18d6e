"""Small helpers every layer may use: "unset" values, paths, dataset lists and atomic writing.

Paths are resolved from the working directory (or given absolute), never from where the package is installed.
Only the standard library is imported here (torch only inside ``atomic_torch_save``), so converters that must run
without torch can use the same atomic writer.
"""

import os
import shutil
import tempfile

from recbole_transfer.errors import UserInputError


def is_unset(value):
    """Whether a path-like config value means "nothing" (None, '', none, null, ~)."""
    return value is None or str(value).strip().lower() in ("", "none", "~", "null")


def find_path(path, folder=False):
    """``path`` (absolute, or relative to the working directory) if it exists as a file (a folder when
    ``folder``), else None."""
    exists = os.path.isdir if folder else os.path.isfile
    return str(path) if exists(str(path)) else None


def dataset_names(dataset):
    """``'A,B,C'``, ``"['A','B','C']"``, ``'[A,B,C]'`` or ``['A', 'B', 'C']`` -> ``['A', 'B', 'C']`` (several
    names mean several domains; the string spellings are what a command line gives)."""
    if not isinstance(dataset, (list, tuple)):
        text = str(dataset).strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        dataset = text.split(",")
    names = [str(name).strip().strip("'\"").strip() for name in dataset]
    return [name for name in names if name]


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


class CheckpointError(UserInputError):
    """A checkpoint file that cannot be loaded; the message names the file and what is wrong."""


def load_checkpoint(path, map_location="cpu", what="checkpoint", plugin=True):
    """Every checkpoint the project reads comes through here: ``torch.load(weights_only=True)`` only (tensors and
    plain values; a file carrying Python objects is refused, since unpickling it could run code). ``what`` names
    the setting in the messages (e.g. ``pretrained_path``); ``plugin``: the file must be a checkpoint written by
    this project (a dict with ``state_dict`` and a plain ``config``), else any tensor container is returned.
    """
    import pickle

    import torch

    where = f"{what} '{path}'"
    if not os.path.isfile(str(path)):
        raise CheckpointError(f"{where} not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise CheckpointError(
                f"{where} holds Python objects, not only tensors and plain values: refused "
                "(loading it could run code)"
            ) from None
        raise CheckpointError(f"{where} is not a torch checkpoint") from None
    except RuntimeError as err:
        if "zip archive" in str(err) or "PytorchStreamReader" in str(err):
            raise CheckpointError(f"{where} is truncated or damaged") from None
        raise CheckpointError(
            f"{where} cannot be read ({type(err).__name__})"
        ) from None
    except (
        Exception
    ):  # EOFError, KeyError, IndexError on a text file: not what torch.save writes
        raise CheckpointError(f"{where} is not a torch checkpoint") from None
    if plugin and not (
        isinstance(checkpoint, dict)
        and "state_dict" in checkpoint
        and isinstance(checkpoint.get("config"), dict)
    ):
        raise CheckpointError(
            f"{where} is not a checkpoint written by recbole_transfer (no state_dict and config)"
        )
    return checkpoint


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


def input_stage(
    name,
    model,
    datasets,
    output_key=None,
    settings=None,
    sources=False,
    inherit=(),
    group=None,
):
    """One stage a model's input comes from, as a model's ``input_stages`` declares it and the runner's recipe
    runs it (recbole_transfer.recipe documents each field); ``"@NAME"`` in ``settings`` is stage NAME's output.
    """
    return {
        "name": name,
        "group": group or name,
        "model": model,
        "datasets": dataset_names(datasets) if datasets else [],
        "output_key": output_key,
        "settings": dict(settings or {}),
        "sources": sources,
        "inherit": tuple(inherit),
    }
