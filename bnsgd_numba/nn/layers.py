"""A small set of layers for the seed document's network, with forward and backward.

``Dense`` (NumPy matmul), ``ReLU``, ``softmax_cross_entropy`` and a
``Sequential`` container whose parameters live in one
:class:`~bnsgd_numba.ParameterArena`, so :class:`~bnsgd_numba.SGD` updates
the whole model in one fused kernel call. :class:`~bnsgd_numba.BatchNorm`
fits in as a layer. A ``Sequential`` saves to one ``.npz`` file whose
arrays load directly into the equivalent ``torch.nn.Sequential``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bnsgd_numba._core.checks import check_flag, check_float_dtype, check_positive_int
from bnsgd_numba.sgd.arena import ParameterArena

ARCHITECTURE_KEY = "__architecture__"
"""The entry of a saved model's ``.npz`` file that describes its layers (JSON)."""
FORMAT_NAME = "bnsgd_numba.nn.Sequential"
FORMAT_VERSION = 1


def _kernels() -> Any:
    # numba is imported on the first forward, not with the package
    from bnsgd_numba.nn import _cpu

    return _cpu


class Dense:
    """Fully connected layer, y = x @ weight + bias.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the input and output.
    dtype : float32 or float64
    rng : numpy.random.Generator, optional
        Draws the initial weight (Glorot uniform, Keras' default:
        U(-a, a) with a = sqrt(6 / (in + out))); bias starts at 0.

    Notes
    -----
    ``weight`` has shape (in_features, out_features), so the forward pass is
    one row-major matmul. PyTorch's ``nn.Linear.weight`` is its transpose,
    (out_features, in_features): :meth:`state_dict` and
    :meth:`load_state_dict` use PyTorch's layout, so a state moves between
    the two libraries unchanged.
    """

    def __init__(
        self, in_features: int, out_features: int, *, dtype: Any = np.float32, rng: Any = None
    ) -> None:
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.dtype = check_float_dtype(dtype)
        rng = np.random.default_rng() if rng is None else rng
        limit = np.sqrt(6.0 / (in_features + out_features))
        self.weight = rng.uniform(-limit, limit, (in_features, out_features)).astype(dtype)
        self.bias = np.zeros(out_features, dtype)
        self.grad_weight = np.zeros_like(self.weight)
        self.grad_bias = np.zeros_like(self.bias)
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool = True, *, out: Any = None) -> np.ndarray:
        """Return x @ weight + bias.

        Parameters
        ----------
        x : ndarray of shape (N, in_features)
            Kept by reference for :meth:`backward`.
        training : bool
            Unused: a dense layer is the same in both modes.
        out : ndarray of shape (N, out_features), optional
            Where to write the output.
        """
        if type(x) is not np.ndarray or x.ndim != 2 or x.shape[1] != self.in_features:
            _check_matrix(x, "x", self.in_features, self.dtype, "Dense")
        if x.dtype != self.dtype:
            raise TypeError(f"Dense: x must be {self.dtype}, got {x.dtype}")
        if out is not None:
            _check_out(out, (x.shape[0], self.out_features), self.dtype, "Dense")
        y = np.matmul(x, self.weight, out=out)
        y += self.bias
        self._x = x
        return y

    __call__ = forward

    def backward(self, dy: np.ndarray, *, out: Any = None) -> np.ndarray:
        """Write grad_weight = x.T @ dy and grad_bias = sum(dy); return dy @ weight.T.

        Parameters
        ----------
        dy : ndarray of shape (N, out_features)
        out : ndarray of shape (N, in_features), optional
            Where to write dx.
        """
        if self._x is None:
            raise RuntimeError("backward() called before forward()")
        rows = self._x.shape[0]
        if type(dy) is not np.ndarray or dy.shape != (rows, self.out_features):
            _check_matrix(dy, "dy", self.out_features, self.dtype, "Dense", rows)
        if dy.dtype != self.dtype:
            raise TypeError(f"Dense: dy must be {self.dtype}, got {dy.dtype}")
        if out is not None:
            _check_out(out, self._x.shape, self.dtype, "Dense")
        np.matmul(self._x.T, dy, out=self.grad_weight)
        np.sum(dy, axis=0, out=self.grad_bias)
        return np.matmul(dy, self.weight.T, out=out)

    def parameters(self) -> list[np.ndarray]:
        """Return ``[weight, bias]``."""
        return [self.weight, self.bias]

    def gradients(self) -> list[np.ndarray]:
        """Return ``[grad_weight, grad_bias]``."""
        return [self.grad_weight, self.grad_bias]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of ``weight`` in PyTorch's (out_features, in_features) layout and ``bias``."""
        return {"weight": np.ascontiguousarray(self.weight.T), "bias": self.bias.copy()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy ``weight`` (PyTorch's layout, (out_features, in_features)) and ``bias`` in.

        Raises
        ------
        KeyError
            When a key is missing or unexpected.
        ValueError, TypeError
            When an entry has the wrong shape or dtype. Nothing is modified.
        """
        checked = _check_state(state, self.state_dict(), "state_dict")
        np.copyto(self.weight, checked["weight"].T)
        np.copyto(self.bias, checked["bias"])

    def config(self) -> dict[str, Any]:
        """The constructor's arguments (what :meth:`Sequential.save` records)."""
        return {"in_features": self.in_features, "out_features": self.out_features}

    def __repr__(self) -> str:
        return f"Dense({self.in_features}, {self.out_features}, dtype={self.dtype.name})"


class ReLU:
    """y = max(x, 0); the gradient passes where x > 0.

    NaN inputs give NaN outputs (as ``torch.relu``) and a zero gradient.
    The output of the last forward is kept by reference for the backward.
    """

    def __init__(self) -> None:
        self._y: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool = True, *, out: Any = None) -> np.ndarray:
        """Return max(x, 0) (into ``out`` when given)."""
        if type(x) is not np.ndarray or x.dtype.kind != "f":
            raise TypeError(f"ReLU: x must be a floating-point NumPy array, got {_describe(x)}")
        if out is not None:
            _check_out(out, x.shape, x.dtype, "ReLU")
        self._y = np.maximum(x, 0, out=out)
        return self._y

    __call__ = forward

    def backward(self, dy: np.ndarray, *, out: Any = None) -> np.ndarray:
        """Return dy where the input was positive, 0 elsewhere (into ``out`` when given)."""
        if self._y is None:
            raise RuntimeError("backward() called before forward()")
        y = self._y
        if type(dy) is not np.ndarray or dy.shape != y.shape or dy.dtype != y.dtype:
            raise ValueError(
                f"ReLU: dy must be a {y.dtype} array of shape {y.shape}, got {_describe(dy)}"
            )
        if out is None:
            out = np.empty_like(dy)
        else:
            _check_out(out, y.shape, y.dtype, "ReLU")
        if dy.ndim == 2:
            _kernels().relu_backward(dy, y, out)
        else:
            np.multiply(dy, y > 0, out=out)
        return out

    def parameters(self) -> list[np.ndarray]:
        """A ReLU has no parameters."""
        return []

    def gradients(self) -> list[np.ndarray]:
        """A ReLU has no gradients."""
        return []

    def state_dict(self) -> dict[str, np.ndarray]:
        """A ReLU has no state: ``{}``."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Accept the empty state; raise KeyError on anything else."""
        _check_state(state, {}, "state_dict")

    def config(self) -> dict[str, Any]:
        """The constructor's arguments: none."""
        return {}

    def __repr__(self) -> str:
        return "ReLU()"


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


def _check_matrix(
    x: Any, name: str, columns: int, dtype: np.dtype, owner: str, rows: int | None = None
) -> None:
    # the slow path of the per-call check: say precisely what is wrong
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{owner}: {name} must be a NumPy array, got {type(x).__name__}")
    expected = f"({'N' if rows is None else rows}, {columns})"
    if x.ndim != 2 or x.shape[1] != columns or (rows is not None and x.shape[0] != rows):
        raise ValueError(f"{owner}: {name} must have shape {expected}, got {x.shape}")


def _check_out(out: Any, shape: tuple[int, ...], dtype: np.dtype, owner: str) -> None:
    if type(out) is not np.ndarray or out.shape != tuple(shape) or out.dtype != dtype:
        raise ValueError(
            f"{owner}: out must be a {dtype} array of shape {tuple(shape)}, got {_describe(out)}"
        )
    if not out.flags.writeable:
        raise ValueError(f"{owner}: out is read-only")


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy and its gradient with respect to the logits.

    Parameters
    ----------
    logits : ndarray of shape (N, K), float32 or float64
    labels : integer ndarray of shape (N,), values in [0, K)

    Returns
    -------
    loss : float
        mean over the batch of -log softmax(logits)[label].
    grad : ndarray of shape (N, K)
        (softmax(logits) - onehot(labels)) / N, in the dtype of ``logits``.

    Raises
    ------
    ValueError, TypeError
        Naming ``logits`` or ``labels`` (and the first label out of range).

    Notes
    -----
    Each row is shifted by its maximum, and log(sum(exp(z - max(z)))) is
    accumulated in float64: nothing overflows and the small probabilities
    are kept.
    """
    logits, labels = _check_logits_and_labels(logits, labels)
    grad = np.empty_like(logits)
    loss, _ = loss_and_grad(logits, labels, grad)
    return loss, grad


def _check_logits_and_labels(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(logits, np.ndarray) or logits.dtype not in (np.float32, np.float64):
        raise TypeError(f"logits must be a float32 or float64 array, got {_describe(logits)}")
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (N, K) with N, K >= 1, got {logits.shape}")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"labels must have shape ({logits.shape[0]},) to match logits, got {labels.shape}"
        )
    return logits, labels


def loss_and_grad(
    logits: np.ndarray, labels: np.ndarray, grad: np.ndarray | None
) -> tuple[float, int]:
    """Mean softmax cross-entropy and the rows predicted right; ``grad`` written when given.

    The training loop's call: ``logits`` (N, K) float and ``labels`` (N,)
    integers are taken as they are (their types are checked once, when the
    data is loaded); a label out of range still raises ``ValueError``
    before ``grad`` is written. ``grad`` receives what
    :func:`softmax_cross_entropy` returns.
    """
    rows, classes = logits.shape
    target = logits[:0] if grad is None else grad
    total, correct, bad = _kernels().softmax_cross_entropy_rows(
        logits, labels, target, grad is not None
    )
    if bad >= 0:
        raise ValueError(f"labels must be in [0, {classes}), got {labels[bad]} at index {bad}")
    return total / rows, int(correct)


class Sequential:
    """Layers applied in order, their parameters gathered into one arena.

    Parameters
    ----------
    layers : sequence of layers
        Each has ``forward(x, training)``, ``backward(dy)``, ``parameters()``
        and ``gradients()`` (``BatchNorm``, ``Dense``, ``ReLU``).
    dtype : float32 or float64

    Attributes
    ----------
    layers : list
    arena : ParameterArena
        Holds every parameter and gradient; the layers' arrays are views
        into it (their initial values are copied in).
    training : bool
        The mode: True (the default, as PyTorch) uses batch statistics and
        updates running ones; :meth:`eval` switches to inference. See
        :meth:`train`.

    Notes
    -----
    The last layer's output is the logits; :meth:`evaluate` and the
    training loop apply softmax cross-entropy to them.

    **The state and the file.** :meth:`state_dict` uses PyTorch's keys,
    ``"<layer index>.<name>"`` (``0.weight``, ``0.running_mean``,
    ``0.num_batches_tracked``, ``1.weight``, ...), in PyTorch's order and
    layouts (a :class:`Dense` weight is stored transposed, as
    ``nn.Linear.weight``): it loads into the equivalent
    ``torch.nn.Sequential`` as it is. :meth:`save` writes those arrays and
    a description of the layers (JSON, under ``"__architecture__"``) to one
    ``.npz`` file; :meth:`load` rebuilds the model from it.

    Examples
    --------
    Train, save, load back and use in PyTorch (the seed's network is
    ``BatchNorm1d(784), Linear(784, 64), ReLU, BatchNorm1d(64), Linear(64, 10)``)::

        from bnsgd_numba.nn import Sequential
        from bnsgd_numba.nn.data import load_data
        from bnsgd_numba.nn.training import TrainConfig, train

        data = load_data("~/.keras/datasets/mnist.npz")
        model = train(data, TrainConfig(epochs=10)).model
        model.save("model.npz")

        model = Sequential.load("model.npz")
        loss, accuracy = model.evaluate(data.x_test, data.y_test)
        classes = model.predict(data.x_test).argmax(axis=1)

        import numpy as np, torch
        net = torch.nn.Sequential(
            torch.nn.BatchNorm1d(784), torch.nn.Linear(784, 64), torch.nn.ReLU(),
            torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 10),
        )
        with np.load("model.npz") as saved:
            net.load_state_dict(
                {k: torch.from_numpy(saved[k]) for k in saved.files if k != "__architecture__"}
            )
        net.eval()
        logits = net(torch.from_numpy(data.x_test)).detach().numpy()  # model.predict, to rounding
    """

    def __init__(self, layers: Sequence[Any], *, dtype: Any = np.float32) -> None:
        self.dtype = check_float_dtype(dtype)
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("layers: a Sequential needs at least one layer")
        owned = [(layer, i) for layer in self.layers for i in range(len(layer.parameters()))]
        initial = [layer.parameters()[i] for layer, i in owned]
        self.arena = ParameterArena([p.shape for p in initial], dtype=dtype)
        for (layer, i), value, param, grad in zip(
            owned, initial, self.arena.params, self.arena.grads, strict=True
        ):
            param[...] = value
            _rebind(layer, i, param, grad)
        self.training = True

    def train(self, mode: bool = True) -> Sequential:
        """Set training mode (``mode=False``: inference); return self, as PyTorch."""
        self.training = check_flag(mode, "mode")
        return self

    def eval(self) -> Sequential:
        """Set inference mode (running statistics, no updates); return self."""
        return self.train(False)

    def forward(self, x: np.ndarray, training: bool | None = None) -> np.ndarray:
        """Run every layer's forward.

        Parameters
        ----------
        x : ndarray of shape (N, features)
        training : bool, optional
            The mode of this call; default :attr:`training`.

        Returns
        -------
        ndarray
            The last layer's output.
        """
        mode = self.training if training is None else check_flag(training, "training")
        for layer in self.layers:
            x = layer.forward(x, mode)
        return x

    __call__ = forward

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Run every layer's backward in reverse, filling the arena's gradients.

        Returns the gradient with respect to the model's input.
        """
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def predict(self, x: Any) -> np.ndarray:
        """The network's output for ``x`` in inference mode, whatever :attr:`training` is.

        Parameters
        ----------
        x : floating-point array of shape (N, features), or (N, ...) with
            ``features`` values per example (images are flattened). Scale it
            as the training data was (:mod:`bnsgd_numba.nn.data`: pixels in
            [0, 1]); it is cast to the model's dtype.

        Returns
        -------
        ndarray of shape (N, outputs)
            The logits: ``argmax(axis=1)`` is the predicted class, a softmax
            gives the probabilities.
        """
        return self.forward(self._check_examples(x), training=False)

    def evaluate(self, x: Any, y: Any) -> tuple[float, float]:
        """Mean softmax cross-entropy and accuracy on ``(x, y)`` in inference mode.

        Parameters
        ----------
        x : array
            As for :meth:`predict`.
        y : integer array of shape (N,)
            Labels in [0, outputs).

        Returns
        -------
        (loss, accuracy) : tuple of float
        """
        x = self._check_examples(x)
        logits = self.forward(x, training=False)
        logits, labels = _check_logits_and_labels(logits, y)
        loss, correct = loss_and_grad(logits, labels, None)
        return loss, correct / len(labels)

    def _check_examples(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise TypeError(f"x must be floating point, scaled as the training data, got {x.dtype}")
        features = _input_features(self.layers[0])
        if x.ndim < 2 or (features is not None and np.prod(x.shape[1:]) != features):
            raise ValueError(
                f"x must have shape (N, {features}) (or N examples of {features} values), "
                f"got {x.shape}"
            )
        return np.ascontiguousarray(x.reshape(len(x), -1), dtype=self.dtype)

    def state(self) -> list[np.ndarray]:
        """Copies of the parameters and of the layers' running statistics."""
        copies = [p.copy() for p in self.arena.params]
        for layer in self.layers:
            for name in ("running_mean", "running_var"):
                if getattr(layer, name, None) is not None:
                    copies.append(getattr(layer, name).copy())
        return copies

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every layer's state under PyTorch's keys (``"1.weight"``, ...).

        The order and the layouts are those of the equivalent
        ``torch.nn.Sequential``'s ``state_dict()``: a :class:`Dense`
        weight is (out_features, in_features); ``num_batches_tracked`` is an
        int64 scalar.
        """
        state = {}
        for index, layer in enumerate(self.layers):
            for key, value in _layer_state(layer, index).items():
                state[f"{index}.{key}"] = value
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy ``state`` into the model, in place, after checking all of it.

        Parameters
        ----------
        state : mapping of str to array
            As :meth:`state_dict` returns (PyTorch CPU tensors work too).

        Raises
        ------
        KeyError
            Listing the missing and unexpected keys (a model of another
            architecture).
        ValueError, TypeError
            Naming the entry whose shape or dtype differs. Nothing is
            modified when anything is wrong.
        """
        checked = _check_state(state, self.state_dict(), "state_dict")
        for index, layer in enumerate(self.layers):
            prefix = f"{index}."
            own = {k[len(prefix) :]: v for k, v in checked.items() if k.startswith(prefix)}
            if own or _layer_state(layer, index):
                layer.load_state_dict(own)

    def architecture(self) -> dict[str, Any]:
        """The description of the layers that :meth:`save` writes (JSON-ready).

        Raises
        ------
        TypeError
            For a layer this format cannot describe (only ``Dense``,
            ``ReLU`` and ``BatchNorm``).
        """
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "dtype": self.dtype.name,
            "layers": [_layer_config(layer, index) for index, layer in enumerate(self.layers)],
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state and the architecture to one ``.npz`` file at ``path``.

        The file is written under a temporary name and then renamed, so an
        interrupted save never leaves a partial file at ``path``; the name
        is used as given (no ``.npz`` is appended).

        Raises
        ------
        TypeError
            For a layer the format cannot describe (nothing is written).
        """
        arrays = self.state_dict()
        arrays[ARCHITECTURE_KEY] = np.array(json.dumps(self.architecture()))
        path = Path(path)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays)
            os.replace(temporary, path)
        finally:
            if temporary.exists():
                temporary.unlink()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Sequential:
        """Rebuild a model saved by :meth:`save`: its layers, parameters and statistics.

        The model comes back in training mode (as a new one); :meth:`predict`
        and :meth:`evaluate` use inference mode regardless.

        Raises
        ------
        ValueError
            Naming the file, and the array where one is to blame: a
            missing, truncated or corrupt file, a file :meth:`save` did not
            write, or arrays that do not fit the recorded architecture.
        """
        from bnsgd_numba.nn._npz import read_npz

        arrays = read_npz(path)
        description = _architecture(arrays, path)
        dtype = _file_dtype(description, path)
        model = cls(_layers_from_file(description, dtype, path), dtype=dtype)
        try:
            model.load_state_dict({k: v for k, v in arrays.items() if k != ARCHITECTURE_KEY})
        except (KeyError, ValueError, TypeError) as error:
            message = error.args[0] if error.args else str(error)
            raise ValueError(f"{path}: {message}") from None
        return model

    def load_weights(self, path: str | os.PathLike[str]) -> None:
        """Load a file written by :meth:`save` into this model (same architecture).

        Raises
        ------
        ValueError
            Naming the file and the array: a file that cannot be read, or
            arrays that do not fit this model. Nothing is modified then.
        """
        from bnsgd_numba.nn._npz import read_npz

        arrays = read_npz(path)
        arrays.pop(ARCHITECTURE_KEY, None)
        try:
            self.load_state_dict(arrays)
        except (KeyError, ValueError, TypeError) as error:
            message = error.args[0] if error.args else str(error)
            raise ValueError(f"{path}: {message}") from None

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"


def _rebind(layer: Any, index: int, param: np.ndarray, grad: np.ndarray) -> None:
    # parameters() and gradients() list (weight, bias) in that order
    names = ("weight", "bias")
    setattr(layer, names[index], param)
    setattr(layer, "grad_" + names[index], grad)


def _input_features(layer: Any) -> int | None:
    for name in ("in_features", "num_features"):
        value = getattr(layer, name, None)
        if isinstance(value, int):
            return value
    return None


def _layer_state(layer: Any, index: int) -> dict[str, np.ndarray]:
    if hasattr(layer, "state_dict"):
        return layer.state_dict()
    if layer.parameters():
        raise TypeError(
            f"layer {index} ({type(layer).__name__}) has parameters but no state_dict()"
        )
    return {}


def _check_state(
    state: Any, expected: Mapping[str, np.ndarray], name: str
) -> dict[str, np.ndarray]:
    # every entry checked against the current state (keys, shapes, dtypes) before any copy
    if not isinstance(state, Mapping):
        raise TypeError(f"{name} must be a mapping of names to arrays, got {type(state).__name__}")
    missing = [key for key in expected if key not in state]
    unexpected = sorted(key for key in state if key not in expected)
    if missing or unexpected:
        raise KeyError(
            f"{name}: missing keys {missing}, unexpected keys {unexpected} "
            "(a model of another architecture?)"
        )
    checked = {}
    for key, template in expected.items():
        value = np.asarray(state[key])
        if key.endswith("num_batches_tracked"):
            if value.shape != () or value.dtype.kind not in "iu" or value < 0:
                raise ValueError(
                    f"{name}[{key!r}] must be a non-negative integer scalar, got {_describe(value)}"
                )
        elif value.shape != template.shape:
            raise ValueError(f"{name}[{key!r}]: expected shape {template.shape}, got {value.shape}")
        elif value.dtype != template.dtype:
            raise TypeError(f"{name}[{key!r}]: expected dtype {template.dtype}, got {value.dtype}")
        checked[key] = value
    return checked


_BATCH_NORM_OPTIONS = (
    "num_features", "eps", "momentum", "affine", "track_running_stats", "channel_axis",
    "on_nonfinite",
)  # fmt: skip


def _layer_config(layer: Any, index: int) -> dict[str, Any]:
    from bnsgd_numba.batch_norm.layer import BatchNorm

    if isinstance(layer, BatchNorm):
        return {"type": "BatchNorm", **{k: getattr(layer, k) for k in _BATCH_NORM_OPTIONS}}
    if type(layer) in (Dense, ReLU):
        return {"type": type(layer).__name__, **layer.config()}
    raise TypeError(
        f"layer {index} ({type(layer).__name__}): only Dense, ReLU and BatchNorm layers "
        "can be saved"
    )


def _file_dtype(description: Mapping[str, Any], path: Any) -> np.dtype:
    try:
        return check_float_dtype(description["dtype"])
    except (KeyError, TypeError):
        raise ValueError(f"{path}: the architecture has no valid 'dtype'") from None


def _architecture(arrays: Mapping[str, np.ndarray], path: Any) -> dict[str, Any]:
    if ARCHITECTURE_KEY not in arrays:
        raise ValueError(
            f"{path}: no {ARCHITECTURE_KEY!r} entry: not a model written by Sequential.save "
            "(a bare state_dict loads with load_state_dict)"
        )
    try:
        description = json.loads(str(arrays[ARCHITECTURE_KEY]))
    except ValueError:
        raise ValueError(f"{path}: {ARCHITECTURE_KEY!r} is not valid JSON") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: {ARCHITECTURE_KEY!r} does not describe a {FORMAT_NAME}")
    if description.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format version {description.get('version')!r}; "
            f"this bnsgd-numba reads version {FORMAT_VERSION}"
        )
    return description


def _layers_from_file(description: Mapping[str, Any], dtype: np.dtype, path: Any) -> list[Any]:
    from bnsgd_numba.batch_norm.layer import BatchNorm

    configs = description.get("layers")
    if not isinstance(configs, list) or not configs:
        raise ValueError(f"{path}: the architecture lists no layers")
    builders = {
        "Dense": lambda c: Dense(**c, dtype=dtype, rng=np.random.default_rng(0)),
        "ReLU": lambda c: ReLU(**c),
        "BatchNorm": lambda c: BatchNorm(**c, dtype=dtype),
    }
    layers = []
    for index, config in enumerate(configs):
        if not isinstance(config, dict) or config.get("type") not in builders:
            kind = config.get("type") if isinstance(config, dict) else config
            raise ValueError(f"{path}: layer {index}: unknown layer type {kind!r}")
        options = {k: v for k, v in config.items() if k != "type"}
        try:
            layers.append(builders[config["type"]](options))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: layer {index} ({config['type']}): {error}") from None
    return layers
