"""Reading numpy arrays out of a pickle without letting the file build arbitrary numpy objects.

Legacy detectron2 model-zoo weights are pickles of numpy arrays. Unpickling them with numpy's own globals is
not safe even when only ``numpy.dtype`` and ``_reconstruct`` are admitted: the file supplies the dtype's
``__setstate__`` state, which numpy does not validate, so a crafted file can give an integer dtype an object
field and make numpy read file bytes as object pointers. Here the numpy globals are stand-ins that take only
what plain numeric arrays need (a simple descriptor, a byte order, raw bytes) and build the arrays themselves
with ``np.frombuffer``; anything else is refused.
"""

from __future__ import annotations

import codecs
import collections
import pickle
from typing import Any, BinaryIO

import numpy as np

#: dtype kinds an array of weights can have: bool, signed and unsigned ints, floats, complex
_KINDS = frozenset("biufc")


class _DType:
    """Stand-in for ``numpy.dtype(descr, align, copy)`` followed by ``__setstate__(state)``."""

    def __init__(self, descr: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(descr, str) or len(descr) > 8:
            raise pickle.UnpicklingError(f"refusing to unpickle a numpy dtype {descr!r} (plain numbers only)")
        dtype = np.dtype(descr)
        if dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise pickle.UnpicklingError(f"refusing to unpickle a numpy dtype {descr!r} (plain numbers only)")
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        # numpy's state: (version, byte order, subdescr, names, fields, elsize, alignment, flags)
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in ("<", ">", "|", "=")
                and state[2] is None and state[3] is None and state[4] is None
                and all(v == -1 for v in state[5:7])):
            raise pickle.UnpicklingError("refusing to unpickle a numpy dtype state that is not a plain number's")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class _Array:
    """Stand-in for ``_reconstruct(ndarray, shape, typecode)`` followed by ``__setstate__(state)``."""

    def __init__(self, subtype: Any = None, shape: Any = None, typecode: Any = None) -> None:
        if subtype is not _NDARRAY:
            raise pickle.UnpicklingError("refusing to unpickle an array subclass (plain numpy arrays only)")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # (version, shape, dtype, is_fortran, raw bytes)
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _DType)
                and isinstance(state[4], (bytes, bytearray, str)) and isinstance(state[1], tuple)
                and all(isinstance(n, int) and n >= 0 for n in state[1])):
            raise pickle.UnpicklingError("refusing to unpickle an array state that is not a plain array's")
        _, shape, dtype, fortran, raw = state
        raw = raw.encode("latin1") if isinstance(raw, str) else raw  # Python 2 pickles (read as latin1)
        flat = np.frombuffer(raw, dtype=dtype.dtype)
        if flat.size != int(np.prod(shape, dtype=np.int64)):
            raise pickle.UnpicklingError(f"an array of shape {shape} holds {flat.size} values")
        self.array = flat.reshape(shape, order="F" if fortran else "C").copy()


def _scalar(dtype: Any, raw: Any) -> Any:
    """Stand-in for ``numpy.core.multiarray.scalar(dtype, bytes)``."""
    raw = raw.encode("latin1") if isinstance(raw, str) else raw  # Python 2 pickles (read as latin1)
    if not isinstance(dtype, _DType) or not isinstance(raw, (bytes, bytearray)) or len(raw) != dtype.dtype.itemsize:
        raise pickle.UnpicklingError("refusing to unpickle a numpy scalar that is not a plain number")
    return np.frombuffer(raw, dtype=dtype.dtype)[0]


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Stand-in for ``numpy.core.numeric._frombuffer`` (arrays pickled with protocol 5)."""
    if not isinstance(dtype, _DType) or not isinstance(shape, tuple) or order not in ("C", "F"):
        raise pickle.UnpicklingError("refusing to unpickle an array that is not a plain array")
    return np.frombuffer(buf, dtype=dtype.dtype).reshape(shape, order=order).copy()


_NDARRAY = object()  # what ``numpy.ndarray`` stands for: only ever the first argument of ``_reconstruct``

_ALLOWED: dict[tuple[str, str], Any] = {("collections", "OrderedDict"): collections.OrderedDict,
                                        ("_codecs", "encode"): codecs.encode,  # bytes in protocol 0-2 pickles
                                        ("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _DType}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED.update({(f"{_core}.multiarray", "_reconstruct"): _Array, (f"{_core}.multiarray", "scalar"): _scalar,
                     (f"{_core}.numeric", "_frombuffer"): _frombuffer})


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays are allowed)") \
                from None


def _resolve(obj: Any) -> Any:
    """Replace the stand-ins by what they built, through dicts, lists and tuples."""
    if isinstance(obj, _Array):
        if obj.array is None:
            raise pickle.UnpicklingError("an array without its data")
        return obj.array
    if isinstance(obj, _DType):
        return obj.dtype
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v) for v in obj)
    return obj


def load_numpy_pickle(f: BinaryIO) -> Any:
    """Unpickle ``f`` admitting plain containers, strings, numbers and plain numeric numpy arrays only.

    Raises:
        pickle.UnpicklingError: the file holds anything else (the message names it).
    """
    return _resolve(_Unpickler(f, encoding="latin1").load())
