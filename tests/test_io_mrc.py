"""MRC stacks: atomic writers, header checks and the lazy ImageSource reader."""

import os

import mrcfile
import numpy as np
import pytest

from cryoclass.errors import InputError
from cryoclass.io.mrc import ImageSource, read_header, read_stack, write_image, write_stack


def _stack(n, box=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, box, box)).astype(np.float32)


def test_write_stack_round_trip_with_pixel_size(tmp_path):
    data = _stack(5)
    path = tmp_path / "s.mrcs"
    write_stack(path, data, pixel_size_A=1.234)
    back, psize = read_stack(path)
    np.testing.assert_array_equal(back, data)
    assert psize == pytest.approx(1.234, rel=1e-6)
    with mrcfile.open(path, permissive=True) as mrc:
        assert int(mrc.header.mode) == 2
        assert mrc.is_image_stack()
        assert mrc.voxel_size.x == pytest.approx(1.234, rel=1e-6)
    info = read_header(str(path))
    assert (info.nx, info.ny, info.nz) == (16, 16, 5)
    assert [p.name for p in tmp_path.iterdir()] == ["s.mrcs"]  # no temp file left


def test_write_image_and_2d_file_is_stack_of_one(tmp_path):
    img = _stack(1)[0]
    path = tmp_path / "one.mrc"
    write_image(path, img, 2.0)
    back, psize = read_stack(path)
    assert back.shape == (1, 16, 16) and psize == pytest.approx(2.0)
    src = ImageSource([str(path)] * 2, [0, 0])
    src.validate()
    np.testing.assert_array_equal(src.read([1, 0]), np.stack([img, img]))


def test_image_source_arbitrary_rows_across_stacks(tmp_path):
    stacks = [_stack(n, seed=k) for k, n in enumerate((7, 3, 5))]
    paths = []
    for k, data in enumerate(stacks):
        p = str(tmp_path / f"s{k}.mrcs")
        write_stack(p, data, 1.0)
        paths.append(p)
    rng = np.random.default_rng(3)
    file_of = rng.integers(0, 3, 40)
    index_of = np.array([rng.integers(0, len(stacks[f])) for f in file_of])
    src = ImageSource(np.array(paths)[file_of], index_of, max_open=2)
    src.validate()
    assert src.box_px == 16
    rows = rng.permutation(40)[:25].tolist() + [5, 5, 0]
    got = src.read(rows)
    want = np.stack([stacks[file_of[r]][index_of[r]] for r in rows])
    assert got.dtype == np.float32 and got.shape == (28, 16, 16)
    np.testing.assert_array_equal(got, want)
    assert len(src._open) <= 2  # bounded number of open stacks
    assert src.read([]).shape == (0, 16, 16)
    src.close()


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float16])
def test_other_modes_convert_to_float32(tmp_path, dtype):
    data = (np.arange(2 * 8 * 8).reshape(2, 8, 8) % 100).astype(dtype)
    path = str(tmp_path / "m.mrcs")
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        mrc.set_image_stack()
    src = ImageSource([path, path], [1, 0])
    src.validate()
    out = src.read([0, 1])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.stack([data[1], data[0]]).astype(np.float32))


def test_missing_stack(tmp_path):
    src = ImageSource([str(tmp_path / "nope.mrcs")], [0])
    with pytest.raises(InputError, match=r"nope\.mrcs.*not found.*particle row 1"):
        src.validate()


def test_index_past_end(tmp_path):
    path = str(tmp_path / "s.mrcs")
    write_stack(path, _stack(3), 1.0)
    src = ImageSource([path] * 3, [0, 2, 3])
    with pytest.raises(InputError, match=r"s\.mrcs: particle row 3 asks for image 4.*holds 3"):
        src.validate()
    with pytest.raises(InputError, match=r"particle row 3 asks for image 4"):
        ImageSource([path] * 3, [0, 2, 3]).read([2])


def test_truncated_stack(tmp_path):
    path = str(tmp_path / "t.mrcs")
    write_stack(path, _stack(4), 1.0)
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size - 100)
    with pytest.raises(InputError, match=r"t\.mrcs: truncated MRC file.*re-extract"):
        ImageSource([path], [0]).validate()


def test_not_an_mrc(tmp_path):
    path = tmp_path / "x.mrcs"
    path.write_bytes(b"hello")
    with pytest.raises(InputError, match=r"x\.mrcs: not a readable MRC"):
        ImageSource([str(path)], [0]).validate()


def test_mixed_box_sizes(tmp_path):
    a, b = str(tmp_path / "a.mrcs"), str(tmp_path / "b.mrcs")
    write_stack(a, _stack(2, box=16), 1.0)
    write_stack(b, _stack(2, box=20), 1.0)
    with pytest.raises(InputError, match=r"mixed box sizes.*b\.mrcs has 20x20.*row 3"):
        ImageSource([a, a, b], [0, 1, 0]).validate()


def test_non_square_and_complex(tmp_path):
    path = str(tmp_path / "r.mrcs")
    write_stack(path, np.zeros((2, 8, 12), np.float32), 1.0)
    with pytest.raises(InputError, match="square"):
        ImageSource([path], [0]).validate()
    cpath = str(tmp_path / "c.mrc")
    with mrcfile.new(cpath) as mrc:
        mrc.set_data(np.zeros((8, 8), np.complex64))
    with pytest.raises(InputError, match="mode 4 is complex"):
        ImageSource([cpath], [0]).validate()


def test_nan_pixels_named(tmp_path):
    data = _stack(4)
    data[2, 3, 3] = np.nan
    data[3, 0, 0] = np.inf
    path = str(tmp_path / "n.mrcs")
    write_stack(path, data, 1.0)
    src = ImageSource([path] * 4, [0, 1, 2, 3])
    src.validate()  # header-only: does not look at pixels
    np.testing.assert_array_equal(src.read([0, 1]), data[:2])
    with pytest.raises(InputError, match=r"n\.mrcs: image 3 .*particle row 3.*NaN or inf"):
        src.read([0, 2])
    with pytest.raises(InputError, match=r"image 4 "):
        src.read([3])
