"""LAPACK calls that release the GIL, for work run side by side on threads.

``scipy.linalg``'s f2py wrappers hold the GIL inside LAPACK, so two threads calling them run one
after the other; ``numpy.linalg`` releases it but computes float32 input in float64. Here the
single-precision symmetric eigensolver (``ssyevd``) is called through scipy's own Cython LAPACK
table (the same library, same results bit for bit as ``scipy.linalg.eigh(driver="evd")``) with
ctypes, which drops the GIL for the duration of the call.
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np

_lock = threading.Lock()
_fns: dict = {}


def _cython_lapack(name: str):
    """ctypes function for ``scipy.linalg.cython_lapack.<name>`` (all arguments pointers)."""
    with _lock:
        if name not in _fns:
            from scipy.linalg import cython_lapack

            cap = cython_lapack.__pyx_capi__[name]
            # own prototypes: setting restype/argtypes on ctypes.pythonapi would change them for
            # every other user of that shared object
            get_name = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(
                ("PyCapsule_GetName", ctypes.pythonapi))
            get_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
                ("PyCapsule_GetPointer", ctypes.pythonapi))
            sig = get_name(cap)
            # every argument a pointer, integers 32-bit (LP64): anything else is not called
            args = sig[sig.index(b"(") + 1:sig.rindex(b")")].split(b",")
            if not sig.startswith(b"void (") or not all(a.strip().endswith(b"*") for a in args) \
                    or any(b"int" in a and a.strip() != b"int *" for a in args):
                raise RuntimeError(f"unexpected LAPACK signature for {name}: {sig!r}")
            ptr = get_pointer(cap, sig)
            _fns[name] = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * len(args)))(ptr)
        return _fns[name]


def eigh_f32(C: np.ndarray):
    """Eigenvalues (ascending) and eigenvectors (columns) of symmetric ``C`` in float32 LAPACK
    ``ssyevd``, lower triangle, GIL released. Falls back to ``scipy.linalg.eigh`` (GIL held) if
    scipy's Cython LAPACK table is not reachable."""
    F = C.shape[0]
    try:
        fn = _cython_lapack("ssyevd")
    except Exception:  # a scipy without the capsule table, or an unexpected (ILP64) signature
        from scipy.linalg import eigh

        return eigh(np.asarray(C, dtype=np.float32), driver="evd", check_finite=False)
    a = np.array(C, dtype=np.float32, order="F")
    w = np.empty(F, dtype=np.float32)
    ref = ctypes.byref

    def ptr(arr):
        return arr.ctypes.data_as(ctypes.c_void_p)

    n, info = ctypes.c_int(F), ctypes.c_int(0)
    jobz, uplo = ctypes.c_char(b"V"), ctypes.c_char(b"L")
    wq, iq = np.empty(1, dtype=np.float32), np.empty(1, dtype=np.int32)
    fn(ref(jobz), ref(uplo), ref(n), ptr(a), ref(n), ptr(w), ptr(wq), ref(ctypes.c_int(-1)),
       ptr(iq), ref(ctypes.c_int(-1)), ref(info))                       # workspace query
    lwork, liwork = max(1, int(wq[0])), max(1, int(iq[0]))
    work = np.empty(lwork, dtype=np.float32)
    iwork = np.empty(liwork, dtype=np.int32)
    fn(ref(jobz), ref(uplo), ref(n), ptr(a), ref(n), ptr(w), ptr(work), ref(ctypes.c_int(lwork)),
       ptr(iwork), ref(ctypes.c_int(liwork)), ref(info))
    if info.value != 0:
        raise np.linalg.LinAlgError(f"ssyevd failed (info={info.value})")
    return w, a
