"""Export to libCacheSim.

**Export** (:func:`export_libcachesim_csv`, ``kvsim export-trace``): the block-level access
stream for libCacheSim.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kvsim.replay import check_block_size, request_blocks, resolve_block_size
from kvsim.traces import iter_requests

__all__ = ["LIBCACHESIM_PARAMS", "export_libcachesim_csv"]

LIBCACHESIM_PARAMS = "time-col=1,obj-id-col=2,obj-size-col=3,delimiter=,,has-header=true,obj-id-is-num=true"


def export_libcachesim_csv(traces, output, *, block_size: int | None = None, trace_block_size: int | None = None,
                           time_unit: str = "auto", arrival_rate: float | None = None, seed: int = 0,
                           vllm: bool = False, skip_bad: bool = False, bytes_per_token: int | None = None,
                           max_requests: int | None = None) -> dict:
    """Write the block-level access stream of ``traces`` as a CSV file for libCacheSim.

    One row per block access, requests in replay order and each request's blocks head first
    (the keys :func:`replay` serves, see :func:`request_blocks`). Columns, with a header:

    * ``time`` -- whole seconds on the replay clock (libCacheSim truncates to an integer),
    * ``obj_id`` -- the namespaced block id (an unsigned integer below 2**63),
    * ``obj_size`` -- the block size in tokens (times ``bytes_per_token`` if given): every
      block occupies a whole block slot, the partial last one too,
    * ``request`` -- the request's index (0-based), ignored by libCacheSim.

    The file is written to a temporary file beside ``output`` and renamed. Run, e.g.::

        cachesim FILE csv lru,fifo 4096 --ignore-obj-size 1 \\
            -t "time-col=1,obj-id-col=2,obj-size-col=3,delimiter=,,has-header=true,obj-id-is-num=true"

    where 4096 is the capacity in blocks (or drop ``--ignore-obj-size`` and give
    ``blocks * obj_size``). libCacheSim's objects are independent: its hits equal the prefix
    cache's only where the semantics coincide -- single-block requests (every request one
    key, ``alloc_blocks`` 1). For longer requests a prefix cache stops at the first miss,
    pins the request's blocks, allocates room for the output and orders a request's blocks
    tail first; libCacheSim does none of these.
    """
    output = Path(output)
    if bytes_per_token is not None and (type(bytes_per_token) is not int or not 1 <= bytes_per_token <= 10**9):
        # 1 GB a token is beyond any model (Llama-3.1-405B bf16: 516 KB); obj_size must fit libCacheSim's int64
        raise ValueError(f"bytes-per-token must be an integer in [1, 1,000,000,000] (got {bytes_per_token!r})")
    directory = output.parent if str(output.parent) else Path(".")
    if not directory.is_dir():
        raise ValueError(f"cannot write {output}: no such directory {directory}")
    requests, stats = iter_requests(traces, trace_block_size=trace_block_size, time_unit=time_unit,
                                    arrival_rate=arrival_rate, seed=seed, skip_bad=skip_bad)
    bs = resolve_block_size(block_size, stats.files)
    rows = n = 0
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise ValueError(f"cannot write {output}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write("time,obj_id,obj_size,request\n")
            for req in requests:
                if max_requests is not None and n >= max_requests:
                    break
                if bs is None:
                    bs = req.block_size
                if req.block_size != bs:
                    check_block_size(bs, req.block_size, req.where or "a trace")
                keys = request_blocks(req.block_ids, req.input_tokens, req.output_tokens,
                                      req.block_size, bs, vllm)[0]
                size = bs * (bytes_per_token or 1)
                tail = f",{size},{n}\n"
                prefix = f"{int(req.time)},"
                f.write("".join(prefix + str(k) + tail for k in keys))
                rows += len(keys)
                n += 1
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, output)
    except OSError as e:
        _unlink(tmp)
        raise ValueError(f"cannot write {output}: {e.strerror or e}") from None
    except BaseException:
        _unlink(tmp)
        raise
    return {
        "output": str(output),
        "format": "libcachesim-csv",
        "rows": rows,
        "requests": n,
        "block_size": bs,
        "obj_size": (bs or 0) * (bytes_per_token or 1),
        "obj_size_unit": "bytes" if bytes_per_token else "tokens",
        "skipped": stats.skipped,
        "skipped_files": stats.skipped_files,
        "libcachesim_command": f'cachesim {output} csv lru <capacity_blocks> --ignore-obj-size 1 -t "{LIBCACHESIM_PARAMS}"',
    }


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
