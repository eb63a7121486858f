"""The training data: scikit-learn's digits (embedded, offline) or a user's MNIST.

:func:`load_data` takes a path and picks the format:

- an ``.npz`` file with the arrays ``x_train``, ``y_train``, ``x_test``,
  ``y_test`` (Keras' ``mnist.npz`` layout: images (N, 28, 28) uint8, labels
  (N,) integers; other arrays in the file are ignored);
- a directory with MNIST's original IDX files, as the MNIST site and
  torchvision ship them: ``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
  ``t10k-labels-idx1-ubyte``, each gzipped (``.gz``) or not. The directory
  itself, its ``raw/`` or its ``MNIST/raw/`` folder (torchvision's root) is
  searched. Fashion-MNIST and KMNIST use the same names.

Images of any shape are flattened to one row per example. Pixels are scaled
to [0, 1]: 8-bit pixels (uint8, as MNIST's) are divided by 255, pixels of
any other type by the largest absolute value in the training images. The
last ``validation`` fraction of the training set (in file order, 6,000 of
MNIST's 60,000 by default) is held out for validation; the test set is the
file's test set. Labels are integers 0..N-1; unless given, N is the largest
label + 1.
"""

from __future__ import annotations

import gzip
import importlib.util
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SPLIT_SEED = 20240917
"""The fixed seed of the train/validation/test split of the digits."""

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
"""The IDX file of each array (each may also end in ``.gz``)."""

_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_ARRAYS = ("x_train", "y_train", "x_test", "y_test")

DATA_HELP = (
    "an .npz file with x_train, y_train, x_test, y_test (Keras' mnist.npz), or a directory "
    "with MNIST's IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, gzipped (.gz) or not (also found in "
    "its raw/ or MNIST/raw/, as torchvision keeps them). Images are flattened, uint8 pixels "
    "divided by 255 (other types by the largest training value); labels are integers "
    "0..N-1; the last 10%% of the training set is the validation set, the test set is the "
    "file's."
)
"""What ``--data`` accepts (the command line's help; ``%%`` is argparse's ``%``)."""
_UINT8_SCALE = (np.arange(256) / 255.0).astype(np.float32)


@dataclass(frozen=True)
class Dataset:
    """Features scaled to [0, 1] (float32) and integer labels, split three ways."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str

    @property
    def num_features(self) -> int:
        """Inputs per example."""
        return self.x_train.shape[1]


def load_digits(validation: float = 0.15, test: float = 0.2) -> Dataset:
    """The 1,797 8x8 handwritten digits that scikit-learn ships in its wheel.

    Split into train/validation/test with the fixed seed :data:`SPLIT_SEED`;
    pixels (0..16) are scaled to [0, 1].
    """
    pixels, labels = _digits_arrays()
    x = (pixels / 16.0).astype(np.float32)
    y = labels.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_test = int(round(test * len(x)))
    n_val = int(round(validation * len(x)))
    test_idx, val_idx, train_idx = np.split(order, [n_test, n_test + n_val])
    return Dataset(
        x[train_idx], y[train_idx], x[val_idx], y[val_idx], x[test_idx], y[test_idx],
        num_classes=10, name="digits (scikit-learn, 8x8)",
    )  # fmt: skip


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    # The digits file in scikit-learn's wheel, read without importing
    # scikit-learn (its import, with SciPy's, takes longer than the training
    # run); sklearn.datasets.load_digits reads the same file.
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the default data set comes with scikit-learn: pip install 'bnsgd-numba[demo]'"
        )
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        from sklearn.datasets import load_digits as sklearn_digits

        digits = sklearn_digits()
        return digits.data, digits.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1]


def load_data(
    path: str | Path, *, num_classes: int | None = None, validation: float = 0.1
) -> Dataset:
    """Load MNIST-style data from an ``.npz`` file or a directory of IDX files.

    Parameters
    ----------
    path : str or Path
        A directory: the IDX files (:func:`load_idx`); a file: an ``.npz``
        archive (:func:`load_npz`). ``~`` is expanded.
    num_classes : int, optional
        Labels must lie in [0, num_classes). Default: the largest label
        (of the training and test sets) + 1, at least 2.
    validation : float
        The fraction of the training set, taken from its end, held out.

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        With a one-line message naming the file (and the array): a missing
        path, an IDX file given alone, or any problem :func:`load_npz` and
        :func:`load_idx` find, before any training starts.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return load_idx(path, num_classes=num_classes, validation=validation)
    if not path.exists():
        raise ValueError(f"--data: no such file: {path}")
    if path.name.endswith(("-ubyte", "-ubyte.gz")):
        raise ValueError(
            f"{path}: an IDX file; pass the directory that holds all four "
            f"({', '.join(IDX_FILES.values())})"
        )
    return load_npz(path, num_classes=num_classes, validation=validation)


def load_npz(
    path: str | Path, *, num_classes: int | None = None, validation: float = 0.1
) -> Dataset:
    """MNIST-style arrays from a ``.npz`` file: x_train, y_train, x_test, y_test.

    Images of any shape are flattened; pixels are scaled to [0, 1] (uint8
    divided by 255, other types by the largest absolute training value). The
    last ``validation`` fraction of the training set is held out for
    validation.

    Parameters
    ----------
    path : str or Path
    num_classes : int, optional
        Labels must lie in [0, num_classes). Default: the largest label
        (of the training and test sets) + 1, at least 2.
    validation : float
        The fraction of the training set, from its end, held out.

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        Naming the file and the array: a file that is not an intact
        ``.npz`` (empty, text, a single ``.npy``, a corrupt or truncated
        archive), a missing array, lengths that differ between images and
        labels, labels that are not integers in [0, num_classes), or pixels
        that are complex or not finite — before any training starts.
    """
    from bnsgd_numba.nn._npz import read_npz

    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"--data: no such file: {path}")
    arrays = read_npz(path, _ARRAYS)
    return _dataset(
        arrays, {key: f"{path}: {key}" for key in _ARRAYS}, num_classes, validation, str(path)
    )


def load_idx(
    directory: str | Path, *, num_classes: int | None = None, validation: float = 0.1
) -> Dataset:
    """MNIST from its original IDX files in ``directory`` (gzipped or not).

    The files are those of :data:`IDX_FILES`, each optionally ending in
    ``.gz``; they are looked for in ``directory``, ``directory/raw`` and
    ``directory/MNIST/raw`` (where torchvision keeps them), the first folder
    holding all four winning. Where both a file and its ``.gz`` exist, the
    uncompressed one is read. Pixels are scaled and the validation set held
    out as in :func:`load_data`.

    Raises
    ------
    ValueError
        With a one-line message naming the file: files missing, a bad magic
        number, a file shorter or longer than its header says, image and
        label counts that differ, labels out of range.
    """
    directory = Path(directory).expanduser()
    files = _find_idx_files(directory)
    arrays = {key: read_idx(files[key], ndim=1 if key.startswith("y") else None) for key in _ARRAYS}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.ndim < 2:
            raise ValueError(
                f"{files[f'x_{split}']}: images must have at least 2 dimensions "
                f"(N, ...), the header says {images.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(
                f"{files[f'y_{split}']}: {len(labels)} labels, but "
                f"{files[f'x_{split}']} has {len(images)} images"
            )
    where = {key: f"{files[key]}:" for key in _ARRAYS}
    return _dataset(arrays, where, num_classes, validation, f"{directory} (IDX)")


def _find_idx_files(directory: Path) -> dict[str, Path]:
    candidates = [directory, directory / "raw", directory / "MNIST" / "raw"]
    for folder in candidates:
        found = {}
        for key, stem in IDX_FILES.items():
            names = (stem, stem + ".gz", stem.replace("-idx", ".idx"))
            for name in names:
                if (folder / name).is_file():
                    found[key] = folder / name
                    break
        if len(found) == len(IDX_FILES):
            return found
        if found and folder == directory:
            missing = [IDX_FILES[k] for k in IDX_FILES if k not in found]
            raise ValueError(f"{directory}: missing IDX file(s) {missing} (or their .gz)")
    raise ValueError(
        f"{directory}: no MNIST IDX files: expected {', '.join(IDX_FILES.values())} "
        "(each may end in .gz), or an .npz file"
    )


def read_idx(path: str | Path, *, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (gzipped or not, told by its content) into an array.

    The format (http://yann.lecun.com/exdb/mnist/): a magic number of two
    zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64) and the number of dimensions; then each
    dimension as a big-endian uint32; then the data, big-endian, row-major.
    Images are 0x00000803, labels 0x00000801.

    Parameters
    ----------
    path : str or Path
    ndim : int, optional
        The number of dimensions the header must say.

    Raises
    ------
    ValueError
        Naming the file: unreadable or corrupt gzip, a bad magic number, the
        wrong number of dimensions, or data shorter or longer than the
        header says.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: cannot be read ({error})") from None
    magic = raw[:4]
    if len(magic) < 4 or magic[:2] != b"\x00\x00" or magic[2] not in _IDX_TYPES:
        raise ValueError(
            f"{path}: bad magic number 0x{magic.hex()}: not an IDX file "
            "(images start with 0x00000803, labels with 0x00000801)"
        )
    dims = magic[3]
    if ndim is not None and dims != ndim:
        raise ValueError(
            f"{path}: magic number 0x{magic.hex()} says {dims} dimension(s), expected {ndim}"
        )
    header = 4 + 4 * dims
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    dtype = _IDX_TYPES[magic[2]]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        state = "truncated" if len(raw) - header < expected else "longer than its header says"
        raise ValueError(
            f"{path}: {state}: the header says shape {shape} ({expected} bytes of data), "
            f"the file has {len(raw) - header}"
        )
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=False)


def _scale_pixels(x: np.ndarray, scale: float) -> np.ndarray:
    if x.dtype == np.uint8:
        return _UINT8_SCALE[x]
    return (x.astype(np.float64) / scale).astype(np.float32)


def _dataset(
    arrays: dict[str, Any],
    where: dict[str, str],
    num_classes: int | None,
    validation: float,
    name: str,
) -> Dataset:
    # checks shared by both formats; where[key] names the array in messages
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        wx, wy = where[f"x_{split}"], where[f"y_{split}"]
        if x.ndim < 2 or y.ndim != 1:
            raise ValueError(f"{wx} must be (N, ...) and {wy} (N,), got {x.shape} and {y.shape}")
        if len(x) != len(y):
            raise ValueError(f"{wx} has {len(x)} examples but y_{split} has {len(y)} labels")
        if len(x) == 0:
            raise ValueError(f"{wx} is empty")
        if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
            raise ValueError(f"{wx} is not real-valued ({x.dtype})")
        if x.dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
            if bad.size:
                raise ValueError(
                    f"{wx} has NaN or infinite pixels in {bad.size} example(s), "
                    f"first at index {bad[0]}"
                )
        if not np.issubdtype(y.dtype, np.integer):
            if (
                not np.issubdtype(y.dtype, np.floating)
                or not np.isfinite(y).all()
                or np.any(y != np.round(y))
            ):
                raise ValueError(f"{wy} labels must be integers, got {y.dtype}")
    if num_classes is None:
        largest = int(max(arrays["y_train"].max(), arrays["y_test"].max()))
        if largest > len(arrays["y_train"]) + len(arrays["y_test"]):
            raise ValueError(
                f"{where['y_train']} has the label {largest}, which would make more classes "
                "than examples; give the number of classes (--classes) if that is meant"
            )
        num_classes = max(2, largest + 1)
    for split in ("train", "test"):
        y, wy = arrays[f"y_{split}"], where[f"y_{split}"]
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(
                f"{wy} labels must be in [0, {num_classes}), found {int(y.min())}..{int(y.max())}"
            )
    x_train = arrays["x_train"].reshape(len(arrays["x_train"]), -1)
    x_test = arrays["x_test"].reshape(len(arrays["x_test"]), -1)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"{where['x_test']} has {x_test.shape[1]} features per example, "
            f"but {where['x_train']} has {x_train.shape[1]}"
        )
    n_val = max(1, int(round(validation * len(x_train))))
    if len(x_train) - n_val < 2:
        raise ValueError(f"{where['x_train']} needs at least {n_val + 2} examples")
    scale = 255.0 if x_train.dtype == np.uint8 else float(np.abs(x_train).max()) or 1.0
    x_train = _scale_pixels(x_train, scale)
    x_test = _scale_pixels(x_test, scale)
    y_train = arrays["y_train"].astype(np.int64)
    return Dataset(
        x_train[:-n_val], y_train[:-n_val], x_train[-n_val:], y_train[-n_val:],
        x_test, arrays["y_test"].astype(np.int64), num_classes=num_classes, name=name,
    )  # fmt: skip
