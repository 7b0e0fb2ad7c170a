"""Many independent runs: an executor of local processes or of an existing Dask cluster, and
files written atomically so that an interrupted batch loses no finished result.

Shared by ``kvsim sweep`` and ``experiments/validate.py``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def executor(workers: int | None = None, dask_address: str | None = None) -> Iterator[Executor]:
    """``workers`` local processes (None: one per core), or the workers of the Dask cluster at
    ``dask_address`` (the optional ``dask`` extra); shut down (and the Dask client closed) on exit."""
    if not dask_address:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            yield pool
        return
    try:
        from dask.distributed import Client
    except ImportError:
        raise ValueError("--dask needs the optional extra: pip install 'kvsim[dask]'") from None
    with Client(dask_address) as client, client.get_executor() as pool:
        yield pool


_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: the process's umask, for the files write_atomic makes


def write_atomic(path: Path | str, data: str | bytes) -> None:
    """Write ``data`` through a temporary file in the same folder and a rename: a reader (or a
    rerun after an interruption) never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes it 0600: give it the mode a plain open() would
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_figure(path: Path | str, fig, dpi: int = 100) -> None:
    """Save a matplotlib figure atomically (:func:`write_atomic`), in the format of the path's
    extension (PNG without one), and close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".").lower() or "png", dpi=dpi)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
