"""Plain numeric numpy arrays come out of a pickle; a crafted dtype state or any other object does not."""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from teachers.numpy_pickle import load_numpy_pickle


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numeric_arrays_scalars_and_containers_round_trip(protocol: int) -> None:
    data = OrderedDict(w=np.arange(12, dtype=np.float32).reshape(3, 4), b=np.array([1, -2], dtype=">i8"),
                       f=np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)), m=np.array([True, False]),
                       c=np.array([1 + 2j]), it=np.int64(7), lr=np.float32(0.5), name="caffe2", ok=True,
                       nested=[(np.zeros(2, np.uint8),)])
    loaded = load_numpy_pickle(io.BytesIO(pickle.dumps(data, protocol=protocol)))
    assert type(loaded) is OrderedDict and list(loaded) == list(data)
    for key in ("w", "b", "f", "m", "c"):
        np.testing.assert_array_equal(loaded[key], data[key])
        assert loaded[key].dtype == data[key].dtype and loaded[key].shape == data[key].shape
    assert loaded["it"] == 7 and loaded["it"].dtype == np.int64 and loaded["lr"] == np.float32(0.5)
    assert loaded["name"] == "caffe2" and loaded["ok"] is True
    np.testing.assert_array_equal(loaded["nested"][0][0], np.zeros(2, np.uint8))


def _crafted(state: tuple) -> bytes:
    """A pickle of ``numpy.dtype("i8")`` whose ``__setstate__`` state is ``state`` (what a crafted file holds)."""
    marker = object()

    class Crafting(pickle.Pickler):
        def reducer_override(self, obj):
            return (np.dtype, ("i8", False, True), state) if obj is marker else NotImplemented

    buf = io.BytesIO()
    Crafting(buf, protocol=2).dump({"x": marker})
    return buf.getvalue()


def test_a_dtype_state_that_is_not_a_plain_numbers_is_refused() -> None:
    # numpy would take such a state: an 8-byte integer dtype turned into a record with fields (an object
    # field makes numpy read the file's bytes as object pointers)
    assert load_numpy_pickle(io.BytesIO(_crafted((3, "<", None, None, None, -1, -1, 0))))["x"] == np.dtype("<i8")
    with pytest.raises(pickle.UnpicklingError, match="dtype state that is not a plain number's"):
        load_numpy_pickle(io.BytesIO(_crafted((3, "|", None, ("a",), {"a": ("i8", 0)}, 8, 1, 0))))
    with pytest.raises(pickle.UnpicklingError, match=r"numpy dtype 'O8' \(plain numbers only\)"):
        load_numpy_pickle(io.BytesIO(pickle.dumps(np.array([None], dtype=object), protocol=2)))


def test_anything_else_is_refused_unrun(tmp_path) -> None:
    import os

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle (posix|os)\.system"):
        load_numpy_pickle(io.BytesIO(pickle.dumps({"blobs": Evil()}, protocol=2)))
    assert not marker.exists()
