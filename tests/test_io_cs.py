"""CryoSPARC .cs read/write."""

import numpy as np
import pytest

from cryoclass.errors import InputError
from cryoclass.io.cs import read_cs, with_fields, write_cs


def _particles(n=6):
    dtype = [("uid", "<u8"), ("blob/path", "S40"), ("blob/idx", "<u4"),
             ("blob/shape", "<u4", (2,)), ("blob/psize_A", "<f4"), ("ctf/df1_A", "<f4"),
             ("location/micrograph_shape", "<u4", (2,))]
    arr = np.zeros(n, dtype=dtype)
    arr["uid"] = np.arange(n, dtype=np.uint64) * 123456789123
    arr["blob/path"] = [f"J3/extract/mic{i // 2}_particles.mrc".encode() for i in range(n)]
    arr["blob/idx"] = np.arange(n) % 2
    arr["blob/shape"] = 64
    arr["blob/psize_A"] = 1.06
    arr["ctf/df1_A"] = np.linspace(1e4, 2e4, n)
    arr["location/micrograph_shape"] = (4096, 5760)
    return arr


def test_round_trip_bytes_and_subarrays(tmp_path):
    arr = _particles()
    path = tmp_path / "particles.cs"
    write_cs(path, arr)
    assert [p.name for p in tmp_path.iterdir()] == ["particles.cs"]  # no .npy suffix added
    back = read_cs(path)
    assert back.dtype == arr.dtype
    np.testing.assert_array_equal(back, arr)
    assert back["blob/path"][3] == b"J3/extract/mic1_particles.mrc"
    assert back["location/micrograph_shape"].shape == (6, 2)
    # exactly the bytes np.save writes
    ref = tmp_path / "ref.npy"
    np.save(ref, arr)
    assert path.read_bytes() == ref.read_bytes()


def test_str_and_object_fields_stored_as_bytes(tmp_path):
    arr = np.zeros(2, dtype=[("uid", "<u8"), ("blob/path", "U10"), ("x", "O")])
    arr["blob/path"] = ["a.mrc", "bb.mrc"]
    arr["x"] = ["p", "qq"]
    write_cs(tmp_path / "s.cs", arr)
    back = read_cs(tmp_path / "s.cs")
    assert back.dtype["blob/path"].kind == "S" and back.dtype["x"].kind == "S"
    assert back["blob/path"].tolist() == [b"a.mrc", b"bb.mrc"]


def test_bad_cs_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_cs(tmp_path / "none.cs")
    junk = tmp_path / "junk.cs"
    junk.write_bytes(b"not numpy at all")
    with pytest.raises(InputError, match=r"junk\.cs: not a readable CryoSPARC \.cs"):
        read_cs(junk)
    plain = tmp_path / "plain.cs"
    with open(plain, "wb") as fh:
        np.save(fh, np.arange(3))
    with pytest.raises(InputError, match="structured array"):
        read_cs(plain)
    pickled = tmp_path / "pickled.cs"
    with open(pickled, "wb") as fh:
        np.save(fh, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="pickled.cs"):
        read_cs(pickled)


def test_with_fields_replaces_in_place_and_appends():
    arr = _particles(3)
    out = with_fields(arr, {"blob/idx": np.array([7, 8, 9], dtype=np.int64),
                            "alignments2D/shift": np.ones((3, 2), dtype=np.float32)})
    names = list(out.dtype.names)
    assert names[:len(arr.dtype.names)] == list(arr.dtype.names)
    assert names[-1] == "alignments2D/shift"
    assert out.dtype["blob/idx"] == np.int64 and out["blob/idx"].tolist() == [7, 8, 9]
    assert out["alignments2D/shift"].shape == (3, 2)
    np.testing.assert_array_equal(out["blob/path"], arr["blob/path"])


def test_common_dtype_takes_the_widest_bytes_and_refuses_mismatches():
    from cryoclass.io.cs import common_dtype

    a = np.dtype([("uid", "<u8"), ("blob/path", "S10"), ("s", "<f4", (2,))])
    b = np.dtype([("uid", "<u8"), ("blob/path", "S25"), ("s", "<f4", (2,))])
    got = common_dtype([a, b, a])
    assert got["blob/path"] == np.dtype("S25") and got["s"].shape == (2,)
    with pytest.raises(ValueError, match="uid"):
        common_dtype([a, np.dtype([("uid", "<u4"), ("blob/path", "S10"), ("s", "<f4", (2,))])])
