"""Real data formats: MNIST's IDX files (gzipped or not) and .npz, through one entry point."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys

import numpy as np
import pytest

from bnsgd_numba.nn.data import IDX_FILES, load_data, read_idx

TRAIN, TEST = 50, 12


def arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (TRAIN, 28, 28)).astype(np.uint8),
        "y_train": rng.integers(0, 10, TRAIN).astype(np.uint8),
        "x_test": rng.integers(0, 256, (TEST, 28, 28)).astype(np.uint8),
        "y_test": rng.integers(0, 10, TEST).astype(np.uint8),
    }


def idx_bytes(array, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(folder, contents=None, gzipped=("x_train", "y_train"), **raw):
    """The four IDX files in ``folder``; ``raw[key]`` replaces a file's bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    contents = arrays() if contents is None else contents
    for key, stem in IDX_FILES.items():
        data = raw.get(key, idx_bytes(contents[key]))
        if key in gzipped:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return folder


def test_idx_directory_and_npz_give_the_same_dataset(tmp_path):
    contents = arrays()
    np.savez(tmp_path / "mnist.npz", **contents)
    from_npz = load_data(tmp_path / "mnist.npz")
    from_idx = load_data(write_idx(tmp_path / "idx", contents))
    for key in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(from_idx, key), getattr(from_npz, key), key)
    assert from_idx.x_train.dtype == np.float32 and from_idx.y_train.dtype == np.int64
    assert from_idx.num_features == 784


def test_pixels_are_divided_by_255_and_the_last_tenth_is_validation(tmp_path):
    contents = arrays()
    data = load_data(write_idx(tmp_path, contents, gzipped=()))
    flat = contents["x_train"].reshape(TRAIN, -1)
    expected = (flat.astype(np.float64) / 255).astype(np.float32)
    assert len(data.x_val) == 5  # round(0.1 * 50), the end of the training set
    np.testing.assert_array_equal(data.x_train, expected[:45])
    np.testing.assert_array_equal(data.x_val, expected[45:])
    np.testing.assert_array_equal(data.y_val, contents["y_train"][45:])


def test_float_pixels_are_scaled_by_the_largest_training_value(tmp_path):
    contents = {k: v.astype(np.float64) if k[0] == "x" else v for k, v in arrays().items()}
    contents["x_train"][0, 0, 0] = 510.0
    np.savez(tmp_path / "f.npz", **contents)
    data = load_data(tmp_path / "f.npz")
    assert data.x_train[0, 0] == 1.0
    assert data.x_test.max() <= 0.5


@pytest.mark.parametrize("layout", ["raw", "MNIST/raw"])
def test_torchvision_folders_are_found(tmp_path, layout):
    write_idx(tmp_path / layout, gzipped=("x_train", "y_train", "x_test", "y_test"))
    assert len(load_data(tmp_path).x_test) == TEST


def test_a_plain_file_is_preferred_to_its_gz_and_dotted_names_work(tmp_path):
    contents = arrays()
    write_idx(tmp_path, contents, gzipped=())
    other = arrays(seed=1)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(other["y_test"])))
    (tmp_path / "t10k-images-idx3-ubyte").rename(tmp_path / "t10k-images.idx3-ubyte")
    data = load_data(tmp_path)
    np.testing.assert_array_equal(data.y_test, contents["y_test"])


def bad_magic(contents):
    return b"\x08\x03\x00\x00" + idx_bytes(contents["x_test"])[4:]


@pytest.mark.parametrize(
    "key,make,match",
    [
        ("x_test", bad_magic, r"t10k-images-idx3-ubyte: bad magic number 0x08030000"),
        (
            "y_train",
            lambda c: idx_bytes(c["y_train"][:-1]),
            r"train-labels-idx1-ubyte.gz: 49 labels, but .*train-images-idx3-ubyte.gz has 50",
        ),
        ("x_test", lambda c: idx_bytes(c["x_test"])[:-7], r"t10k-images-idx3-ubyte: truncated"),
        ("y_test", lambda c: idx_bytes(c["y_test"]) + b"\0", r"longer than its header says"),
        ("y_test", lambda c: idx_bytes(c["x_test"]), r"t10k-labels-idx1-ubyte: .*expected 1"),
        ("y_test", lambda c: idx_bytes(c["y_test"] + 10), r"labels must be in \[0, 10\)"),
        (
            "x_test",
            lambda c: idx_bytes(np.ascontiguousarray(c["x_test"][:, :27])),
            r"has 756 features per example, but .*train-images-idx3-ubyte.gz: has 784",
        ),
    ],
)
def test_bad_idx_files_are_named(tmp_path, key, make, match):
    contents = arrays()
    write_idx(tmp_path, contents, **{key: make(contents)})
    with pytest.raises(ValueError, match=match) as error:
        load_data(tmp_path, num_classes=10)
    assert "\n" not in str(error.value)


def test_corrupt_gzip_is_named(tmp_path):
    write_idx(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: cannot be read"):
        load_data(tmp_path)


def test_missing_files_are_listed(tmp_path):
    write_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ValueError, match=r"missing IDX file\(s\) \['t10k-labels-idx1-ubyte'\]"):
        load_data(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no MNIST IDX files"):
        load_data(tmp_path / "empty")
    with pytest.raises(ValueError, match="--data: no such file"):
        load_data(tmp_path / "nothing.npz")
    with pytest.raises(ValueError, match="pass the directory"):
        load_data(tmp_path / "train-images-idx3-ubyte.gz")


def test_read_idx_reads_big_endian_types(tmp_path):
    values = np.array([[1.5, -2.0], [3.25, 1e6]], dtype=">f4")
    (tmp_path / "f").write_bytes(idx_bytes(values, 0x0D))
    np.testing.assert_array_equal(read_idx(tmp_path / "f"), values.astype(np.float32))
    (tmp_path / "i").write_bytes(idx_bytes(np.array([7, -300], dtype=">i2"), 0x0B))
    np.testing.assert_array_equal(read_idx(tmp_path / "i", ndim=1), [7, -300])


def test_truncated_npz_names_the_array(tmp_path):
    np.savez(tmp_path / "m.npz", **arrays())
    data = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ValueError, match=r"cut.npz: corrupt .npz archive: truncated: .*array 'x_train'"
    ):
        load_data(tmp_path / "cut.npz")


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "bnsgd_numba", *args], capture_output=True, text=True, timeout=600
    )


def test_the_number_of_classes_comes_from_the_idx_labels_unless_given(tmp_path):
    contents = arrays()
    contents["y_train"] %= 3
    contents["y_test"] %= 3
    write_idx(tmp_path, contents)
    assert load_data(tmp_path).num_classes == 3
    assert load_data(tmp_path, num_classes=10).num_classes == 10


def bad_counts(contents):
    return idx_bytes(contents["y_test"][:-2])


@pytest.mark.parametrize(
    "key,make,message",
    [
        ("x_test", bad_magic, "t10k-images-idx3-ubyte: bad magic number"),
        ("y_test", bad_counts, "t10k-labels-idx1-ubyte: 10 labels, but "),
    ],
    ids=["bad magic", "mismatched counts"],
)
def test_command_line_rejects_bad_idx_files_in_one_line_before_training(
    tmp_path, key, make, message
):
    contents = arrays()
    bad = write_idx(tmp_path / "bad", contents, **{key: make(contents)})
    result = run_cli("train", "--data", str(bad), "--epochs", "1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnsgd-numba train: error: ")
    assert message in lines[0]


def test_command_line_trains_on_idx(tmp_path):
    good = write_idx(tmp_path / "good")
    result = run_cli("train", "--data", str(good), "--epochs", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "45 train, 5 validation, 12 test, 784 inputs, 10 classes" in result.stderr


def test_the_digits_are_read_without_importing_scikit_learn_and_match_its_loader():
    code = (
        "import sys; from bnsgd_numba.nn.data import _digits_arrays; x, y = _digits_arrays(); "
        "print('sklearn' in sys.modules, x.shape, y.shape)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split(maxsplit=1)[0] == "False"
    from sklearn.datasets import load_digits as sklearn_digits

    from bnsgd_numba.nn.data import _digits_arrays

    digits = sklearn_digits()
    pixels, labels = _digits_arrays()
    np.testing.assert_array_equal(pixels, digits.data)
    np.testing.assert_array_equal(labels, digits.target)
