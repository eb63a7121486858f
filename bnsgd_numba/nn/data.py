"""The training data: scikit-learn's digits (embedded, offline) or a user's MNIST-style file."""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLIT_SEED = 20240917
"""The fixed seed of the train/validation/test split of the digits."""


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
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ImportError(
            "the default data set comes with scikit-learn: pip install 'bnsgd-numba[demo]'"
        ) from None
    digits = sklearn_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_test = int(round(test * len(x)))
    n_val = int(round(validation * len(x)))
    test_idx, val_idx, train_idx = np.split(order, [n_test, n_test + n_val])
    return Dataset(
        x[train_idx], y[train_idx], x[val_idx], y[val_idx], x[test_idx], y[test_idx],
        num_classes=10, name="digits (scikit-learn, 8x8)",
    )  # fmt: skip


def _read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    # every way np.load fails on a file that is not an intact .npz, as one ValueError
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file, not an .npz archive")
    with open(path, "rb") as handle:
        start = handle.read(6)
    if start == b"\x93NUMPY":
        raise ValueError(f"{path}: a single .npy array, not an .npz archive of named arrays")
    if not start.startswith(b"PK"):
        raise ValueError(f"{path}: not an .npz archive (a zip file of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            found = sorted(archive.files)
            arrays = {k: archive[k] for k in keys if k in found}
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as error:
        raise ValueError(f"{path}: corrupt .npz archive ({error})") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing array(s) {missing} (found {found})")
    return arrays


def load_npz(
    path: str | Path, *, num_classes: int | None = None, validation: float = 0.1
) -> Dataset:
    """MNIST-style arrays from a ``.npz`` file: x_train, y_train, x_test, y_test.

    Images of any shape are flattened; pixels are scaled by the largest
    absolute training value (255 for MNIST) to [0, 1]. The last
    ``validation`` fraction of the training set is held out for validation.

    Parameters
    ----------
    path : str or Path
    num_classes : int, optional
        Labels must lie in [0, num_classes). Default: the largest label
        (of the training and test sets) + 1, at least 2.
    validation : float
        The fraction of the training set, from its end, held out.

    Raises
    ------
    ValueError
        Naming the file and the array: a file that is not an intact
        ``.npz`` (empty, text, a single ``.npy``, a corrupt archive), a
        missing array, lengths that differ between images and labels,
        labels that are not integers in [0, num_classes), or pixels that
        are complex or not finite — before any training starts.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--data: no such file: {path}")
    arrays = _read_npz(path, ("x_train", "y_train", "x_test", "y_test"))
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim < 2 or y.ndim != 1:
            raise ValueError(
                f"{path}: x_{split} must be (N, ...) and y_{split} (N,), "
                f"got {x.shape} and {y.shape}"
            )
        if len(x) != len(y):
            raise ValueError(
                f"{path}: x_{split} has {len(x)} examples but y_{split} has {len(y)} labels"
            )
        if len(x) == 0:
            raise ValueError(f"{path}: x_{split} is empty")
        if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
            raise ValueError(f"{path}: x_{split} is not real-valued ({x.dtype})")
        bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
        if bad.size:
            raise ValueError(
                f"{path}: x_{split} has NaN or infinite pixels in {bad.size} example(s), "
                f"first at index {bad[0]}"
            )
        if not np.issubdtype(y.dtype, np.integer):
            if (
                not np.issubdtype(y.dtype, np.floating)
                or not np.isfinite(y).all()
                or np.any(y != np.round(y))
            ):
                raise ValueError(f"{path}: y_{split} labels must be integers, got {y.dtype}")
    if num_classes is None:
        largest = int(max(arrays["y_train"].max(), arrays["y_test"].max()))
        if largest > len(arrays["y_train"]) + len(arrays["y_test"]):
            raise ValueError(
                f"{path}: the largest label, {largest}, would make more classes than examples; "
                "give the number of classes (--classes) if that is meant"
            )
        num_classes = max(2, largest + 1)
    for split in ("train", "test"):
        y = arrays[f"y_{split}"]
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(
                f"{path}: y_{split} labels must be in [0, {num_classes}), "
                f"found {int(y.min())}..{int(y.max())}"
            )
    x_train = arrays["x_train"].reshape(len(arrays["x_train"]), -1).astype(np.float64)
    x_test = arrays["x_test"].reshape(len(arrays["x_test"]), -1).astype(np.float64)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"{path}: x_train has {x_train.shape[1]} features per example, x_test {x_test.shape[1]}"
        )
    scale = float(np.abs(x_train).max()) or 1.0
    n_val = max(1, int(round(validation * len(x_train))))
    if len(x_train) - n_val < 2:
        raise ValueError(f"{path}: x_train needs at least {n_val + 2} examples")
    x_train = (x_train / scale).astype(np.float32)
    x_test = (x_test / scale).astype(np.float32)
    y_train = arrays["y_train"].astype(np.int64)
    return Dataset(
        x_train[:-n_val], y_train[:-n_val], x_train[-n_val:], y_train[-n_val:],
        x_test, arrays["y_test"].astype(np.int64), num_classes=num_classes, name=str(path),
    )  # fmt: skip
