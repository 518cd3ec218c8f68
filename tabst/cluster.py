"""Dask clusters for ``--cluster`` (``tabst embed`` and ``tabst compare``).

``--cluster`` takes ``local`` (a :class:`distributed.LocalCluster` sized to this machine: one
single-threaded worker process per core), ``local:N`` (N such workers) or the address of a
running scheduler (``tcp://host:8786``, e.g. one started by dask-jobqueue on SLURM). Without
the option nothing here is imported and tabst runs in one process as before.

Workers run one thread each (torch, BLAS and XGBoost are told so), which is also what makes a
sharded embedding bit-identical to a single-process one: every batch is computed alone, with
the same batch boundaries (:mod:`tabst.embed_dask`).
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager

from .errors import TabstError

CONNECT_TIMEOUT_S = 10
_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc|ws|wss)://\S+$")


def parse_cluster(spec) -> tuple[str, int | str] | None:
    """``None``/``""``/``"none"`` -> None; ``local`` -> ("local", n_cores); ``local:N`` ->
    ("local", N); ``tcp://host:port`` -> ("address", it). Anything else is a :class:`TabstError`
    naming what is accepted."""
    if spec is None:
        return None
    s = str(spec).strip()
    if s.lower() in ("", "none", "off", "no"):
        return None
    if s.lower() == "local":
        return ("local", max(1, os.cpu_count() or 1))
    m = re.fullmatch(r"local:(\d+)", s, flags=re.I)
    if m:
        n = int(m.group(1))
        if n < 1:
            raise TabstError(f"--cluster {s}: the number of local workers must be >= 1.")
        return ("local", n)
    if _ADDRESS.match(s):
        return ("address", s)
    if re.fullmatch(r"[\w.-]+:\d+", s):  # host:port without a scheme
        return ("address", f"tcp://{s}")
    raise TabstError(f"--cluster {s!r}: expected local, local:N (N worker processes) or a Dask "
                     "scheduler address such as tcp://host:8786.")


def _require_distributed():
    try:
        import distributed  # noqa: F401
    except ImportError as e:
        raise TabstError("--cluster needs Dask: pip install 'tabst[dask]' (dask[distributed]).") \
            from e


def _single_thread_env() -> None:
    """Run on each worker: one thread for torch, BLAS (threadpoolctl) and XGBoost."""
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


@contextmanager
def cluster_client(spec):
    """Yield a :class:`distributed.Client` for ``spec`` (see :func:`parse_cluster`), or None
    when ``spec`` asks for no cluster. A local cluster is started (worker processes, no
    dashboard) and shut down at the end; an address that does not answer within
    :data:`CONNECT_TIMEOUT_S` seconds is a clear error."""
    parsed = parse_cluster(spec)
    if parsed is None:
        yield None
        return
    _require_distributed()
    import logging

    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    kind, value = parsed
    if kind == "local":
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        cluster = LocalCluster(n_workers=int(value), threads_per_worker=1, processes=True,
                               dashboard_address=None, env=env, silence_logs=logging.ERROR)
        try:
            with Client(cluster) as client:
                client.run(_single_thread_env)
                yield client
        finally:
            cluster.close()
        return
    try:
        client = Client(value, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as e:
        raise TabstError(f"--cluster {value}: no Dask scheduler answered within "
                         f"{CONNECT_TIMEOUT_S} s ({e}). Start one (`dask scheduler`, or "
                         "dask-jobqueue's SLURMCluster) and pass its address, or use "
                         "--cluster local.") from e
    try:
        if not client.scheduler_info().get("workers"):
            try:
                client.wait_for_workers(1, timeout=120)
            except TimeoutError as e:
                raise TabstError(f"--cluster {value}: the scheduler has no workers (waited "
                                 "120 s). Start some (`dask worker {value}`).") from e
        client.run(_single_thread_env)
        yield client
    finally:
        client.close()


def n_workers(client) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))


def describe(client) -> str:
    """E.g. ``2 workers at tcp://127.0.0.1:40111``."""
    n = n_workers(client)
    return f"{n} worker{'s' if n != 1 else ''} at {client.scheduler.address}"
