"""STAR reader/writer: blocks, types, quoting, errors, atomic writes, 1M-row speed path."""

import time

import numpy as np
import pandas as pd
import pytest

from cryoclass.errors import InputError
from cryoclass.io.star import atomic_output, read_star, write_star

STAR_31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnImagePixelSize #3
_rlnVoltage #4
opticsGroup1 1 1.060000 300.000000
opticsGroup2 2 1.100000 200.000000

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnOpticsGroup #3
_rlnMicrographName #4
000001@Extract/a.mrcs 10000.500000 1 mic1.mrc
# a comment line

000002@Extract/a.mrcs 12000.250000 2 mic2.mrc   # trailing comment
"""


def test_read_relion31_blocks_and_types(tmp_path):
    p = tmp_path / "p.star"
    p.write_text(STAR_31)
    blocks = read_star(p)
    assert list(blocks) == ["optics", "particles"]
    optics, parts = blocks["optics"], blocks["particles"]
    assert list(parts.columns) == ["rlnImageName", "rlnDefocusU", "rlnOpticsGroup",
                                   "rlnMicrographName"]
    assert len(parts) == 2
    assert parts["rlnImageName"].tolist() == ["000001@Extract/a.mrcs", "000002@Extract/a.mrcs"]
    assert parts["rlnDefocusU"].dtype == np.float64
    assert parts["rlnOpticsGroup"].dtype == np.int64
    assert parts["rlnDefocusU"].tolist() == [10000.5, 12000.25]
    assert optics["rlnImagePixelSize"].tolist() == [1.06, 1.1]
    assert optics["rlnOpticsGroupName"].tolist() == ["opticsGroup1", "opticsGroup2"]


def test_read_relion30_bare_block_and_key_value_block(tmp_path):
    p = tmp_path / "p.star"
    p.write_text(
        "data_\nloop_\n_rlnImageName\n_rlnMagnification\n_rlnDetectorPixelSize\n"
        "1@s.mrcs 10000 5.0\n2@s.mrcs 10000 5.0\n\n"
        "data_general\n_rlnNrClasses 5\n_rlnComment 'hello world'\n_rlnRatio 0.5 # c\n"
    )
    blocks = read_star(p)
    assert list(blocks) == ["", "general"]
    assert blocks[""]["rlnMagnification"].tolist() == [10000, 10000]
    general = blocks["general"]
    assert len(general) == 1
    assert general["rlnNrClasses"].iloc[0] == 5
    assert general["rlnComment"].iloc[0] == "hello world"
    assert general["rlnRatio"].iloc[0] == 0.5


def test_quoted_strings_and_nan(tmp_path):
    p = tmp_path / "q.star"
    p.write_text('data_x\nloop_\n_a\n_b\n_c\n1 "two words" nan\n2 \'single q\' 3.5\n3 "" inf\n')
    frame = read_star(p)["x"]
    assert frame["b"].tolist() == ["two words", "single q", ""]
    assert np.isnan(frame["c"].iloc[0]) and frame["c"].iloc[2] == np.inf
    out = tmp_path / "q2.star"
    write_star(out, {"x": frame})
    again = read_star(out)["x"]
    assert again["b"].tolist() == ["two words", "single q", ""]
    assert again["a"].tolist() == [1, 2, 3]


@pytest.mark.parametrize("version", ["3.0", "3.1"])
def test_round_trip(tmp_path, version):
    rng = np.random.default_rng(1)
    n = 500
    parts = pd.DataFrame({
        "rlnImageName": [f"{i % 50 + 1:06d}@Extract/job005/mic{i // 50:03d}.mrcs"
                         for i in range(n)],
        "rlnMicrographName": [f"MotionCorr/mic{i // 50:03d}.mrc" for i in range(n)],
        "rlnCoordinateX": rng.uniform(0, 4000, n).round(2),
        "rlnDefocusU": rng.uniform(5000, 30000, n).round(3),
        "rlnDefocusAngle": rng.uniform(-180, 180, n).round(4),
        "rlnClassNumber": rng.integers(1, 20, n),
        "rlnTiny": rng.uniform(1e-9, 1e-7, n),
    })
    if version == "3.0":
        blocks = {"": parts}
    else:
        parts["rlnOpticsGroup"] = 1
        blocks = {"optics": pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"],
                                          "rlnOpticsGroup": [1],
                                          "rlnImagePixelSize": [1.06]}),
                  "particles": parts}
    path = tmp_path / "rt.star"
    write_star(path, blocks)
    text = path.read_text()
    assert "# version 30001" in text and "_rlnImageName #1" in text
    back = read_star(path)
    assert list(back) == list(blocks)
    for name, frame in blocks.items():
        got = back[name]
        assert list(got.columns) == list(frame.columns)
        for col in frame.columns:
            if pd.api.types.is_float_dtype(frame[col]):
                np.testing.assert_allclose(got[col], frame[col], rtol=1e-6, atol=1e-6)
            elif pd.api.types.is_integer_dtype(frame[col]):
                assert got[col].dtype == np.int64
                assert got[col].tolist() == frame[col].tolist()
            else:
                assert got[col].tolist() == frame[col].tolist()
    np.testing.assert_allclose(back[list(blocks)[-1]]["rlnTiny"], parts["rlnTiny"], rtol=1e-6)


def test_ragged_row_names_line(tmp_path):
    p = tmp_path / "bad.star"
    p.write_text("data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n1@a.mrcs 1.0\n"
                 "2@a.mrcs\n3@a.mrcs 2.0\n")
    with pytest.raises(InputError, match=r"line 6: expected 2 values"):
        read_star(p)
    p.write_text("data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n1@a.mrcs 1.0\n"
                 "2@a.mrcs 1.0 7\n")
    with pytest.raises(InputError, match=r"line 6: expected 2 values.*found 3"):
        read_star(p)


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_star(tmp_path / "missing.star")
    empty = tmp_path / "empty.star"
    empty.write_text("")
    with pytest.raises(InputError, match="empty"):
        read_star(empty)
    junk = tmp_path / "junk.star"
    junk.write_text("hello\nworld\n")
    with pytest.raises(InputError, match="no data_ block"):
        read_star(junk)


def test_empty_loop(tmp_path):
    p = tmp_path / "e.star"
    p.write_text("data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n")
    frame = read_star(p)["particles"]
    assert list(frame.columns) == ["rlnImageName", "rlnDefocusU"] and len(frame) == 0
    write_star(tmp_path / "e2.star", {"particles": frame})
    assert len(read_star(tmp_path / "e2.star")["particles"]) == 0


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    path = tmp_path / "keep.star"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(path, "w") as fh:
        fh.write("partial")
        raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.star"]
    write_star(path, {"x": pd.DataFrame({"a": [1]})})
    assert read_star(path)["x"]["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.star"]


def _write_big_star(path, n):
    """Vectorised generator of a RELION 3.1 particle file with n rows."""
    i = np.arange(n)
    names = (pd.Series(i % 1000 + 1).astype(str).str.zfill(6) + "@Extract/job005/mic"
             + pd.Series(i // 1000).astype(str).str.zfill(5) + ".mrcs")
    defocus = 10000.0 + (i % 9973) * 1.5
    angle = (i % 3600) / 10.0
    header = ("# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroupName #1\n"
              "_rlnOpticsGroup #2\n_rlnImagePixelSize #3\nopticsGroup1 1 1.060000\n\n"
              "# version 30001\n\ndata_particles\n\nloop_\n_rlnImageName #1\n"
              "_rlnDefocusU #2\n_rlnDefocusV #3\n_rlnDefocusAngle #4\n_rlnOpticsGroup #5\n")
    body = (names + " " + pd.Series(defocus).map("{:.6f}".format) + " "
            + pd.Series(defocus + 100).map("{:.6f}".format) + " "
            + pd.Series(angle).map("{:.6f}".format) + " 1")
    with open(path, "w") as fh:
        fh.write(header)
        fh.write("\n".join(body.tolist()))
        fh.write("\n")
    return names, defocus, angle


@pytest.mark.slow
def test_read_one_million_rows(tmp_path):
    n = 1_000_000
    path = tmp_path / "big.star"
    names, defocus, angle = _write_big_star(path, n)
    start = time.perf_counter()
    blocks = read_star(path)
    elapsed = time.perf_counter() - start
    print(f"read_star: {n} rows in {elapsed:.2f} s")
    parts = blocks["particles"]
    assert len(parts) == n
    assert parts["rlnImageName"].iloc[0] == names.iloc[0]
    assert parts["rlnImageName"].iloc[-1] == names.iloc[-1]
    np.testing.assert_array_equal(parts["rlnDefocusU"].to_numpy(), defocus)
    np.testing.assert_allclose(parts["rlnDefocusAngle"].to_numpy(), angle, atol=1e-9)
    assert parts["rlnOpticsGroup"].dtype == np.int64
    assert blocks["optics"]["rlnImagePixelSize"].iloc[0] == 1.06
