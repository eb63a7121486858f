"""A model you can keep: modes, predict/evaluate, state_dict, save/load, and PyTorch as the oracle."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bnsgd_numba.batch_norm.layer import BatchNorm
from bnsgd_numba.nn import Dense, ReLU, Sequential, softmax_cross_entropy
from bnsgd_numba.nn.layers import ARCHITECTURE_KEY
from bnsgd_numba.nn.training import TrainConfig, build_network

FEATURES, HIDDEN, CLASSES = 784, 64, 10


def trained_network(seed=0, features=FEATURES, hidden=HIDDEN, steps=3):
    """The seed's network after a few training steps: running statistics and weights moved."""
    rng = np.random.default_rng(seed)
    model = build_network(features, CLASSES, TrainConfig(hidden=hidden), rng)
    for _ in range(steps):
        x = rng.random((16, features), dtype=np.float32) * 2 + 0.5
        logits = model.forward(x, training=True)
        _, grad = softmax_cross_entropy(logits, rng.integers(0, CLASSES, 16))
        model.backward(grad)
        model.arena.flat_params[...] -= 0.1 * model.arena.flat_grads
    return model


def torch_network(features=FEATURES, hidden=HIDDEN):
    return torch.nn.Sequential(
        torch.nn.BatchNorm1d(features),
        torch.nn.Linear(features, hidden),
        torch.nn.ReLU(),
        torch.nn.BatchNorm1d(hidden),
        torch.nn.Linear(hidden, CLASSES),
    )


def examples(n=40, features=FEATURES, seed=1):
    return np.random.default_rng(seed).random((n, features), dtype=np.float32)


def snapshot(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert after[key].tobytes() == value.tobytes(), key


def test_state_dict_keys_order_and_layouts_are_pytorchs():
    ours = trained_network().state_dict()
    theirs = torch_network().state_dict()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key].shape == tuple(value.shape), key
        assert ours[key].dtype == value.numpy().dtype, key
    assert ours["0.num_batches_tracked"] == 3


def test_saved_model_loads_into_torch_and_predicts_the_same(tmp_path):
    model = trained_network()
    path = tmp_path / "model.npz"
    model.save(path)
    net = torch_network()
    with np.load(path) as saved:
        net.load_state_dict(
            {k: torch.from_numpy(saved[k]) for k in saved.files if k != ARCHITECTURE_KEY}
        )
    net.eval()
    x = examples()
    expected = net(torch.from_numpy(x)).detach().numpy()
    ours = Sequential.load(path).predict(x)
    # float32, sums of 784 and 64 products of O(1) terms in different orders
    scale = np.abs(expected).max()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=64 * np.finfo(np.float32).eps * scale)
    np.testing.assert_array_equal(ours.argmax(axis=1), expected.argmax(axis=1))


def test_the_models_guide_runs_as_written(tmp_path, monkeypatch):
    # docs/models.md's Python, on a small generated file in MNIST's layout and 1 epoch
    guide = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", guide, re.S))
    assert "mnist.npz" in code and "epochs=10" in code
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "tiny.npz",
        x_train=rng.integers(0, 256, (120, 28, 28)).astype(np.uint8),
        y_train=np.arange(120) % CLASSES,
        x_test=rng.integers(0, 256, (30, 28, 28)).astype(np.uint8),
        y_test=np.arange(30) % CLASSES,
    )
    code = code.replace("~/.keras/datasets/mnist.npz", str(tmp_path / "tiny.npz"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(code.replace("epochs=10", "epochs=1"), namespace)
    ours = Sequential.load(tmp_path / "model.npz").predict(namespace["data"].x_test)
    expected = namespace["logits"]
    scale = np.abs(expected).max()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=64 * np.finfo(np.float32).eps * scale)
    assert namespace["classes"].tolist() == ours.argmax(axis=1).tolist()
    assert namespace["accuracy"] == np.mean(namespace["classes"] == namespace["data"].y_test)


def test_pytorch_state_dict_loads_into_our_model():
    net = torch_network()
    with torch.no_grad():
        for bn in (net[0], net[3]):
            bn.running_mean.uniform_(0, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
    net.eval()
    model = build_network(FEATURES, CLASSES, TrainConfig(), np.random.default_rng(5))
    model.load_state_dict(net.state_dict())
    x = examples()
    expected = net(torch.from_numpy(x)).detach().numpy()
    atol = 64 * np.finfo(np.float32).eps * np.abs(expected).max()
    np.testing.assert_allclose(model.predict(x), expected, rtol=0, atol=atol)


def test_save_and_load_round_trip_is_exact(tmp_path):
    model = trained_network()
    model.save(tmp_path / "m.npz")
    loaded = Sequential.load(tmp_path / "m.npz")
    assert repr(loaded) == repr(model)
    assert_unchanged(loaded, model.state_dict())
    x = examples()
    assert model.predict(x).tobytes() == loaded.predict(x).tobytes()
    assert loaded.layers[0].num_batches_tracked == 3
    assert np.shares_memory(loaded.layers[1].weight, loaded.arena.flat_params)


def test_save_writes_exactly_the_given_path(tmp_path):
    trained_network().save(tmp_path / "model")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert Sequential.load(tmp_path / "model").layers[1].in_features == FEATURES


def test_float64_model_and_batch_norm_options_survive_the_file(tmp_path):
    layers = [
        BatchNorm(6, eps=1e-3, momentum=None, dtype=np.float64),
        Dense(6, 4, dtype=np.float64, rng=np.random.default_rng(0)),
        ReLU(),
        BatchNorm(4, affine=False, dtype=np.float64),
        Dense(4, 3, dtype=np.float64, rng=np.random.default_rng(1)),
    ]
    model = Sequential(layers, dtype=np.float64)
    model.forward(np.random.default_rng(2).normal(size=(8, 6)), training=True)
    model.save(tmp_path / "m.npz")
    loaded = Sequential.load(tmp_path / "m.npz")
    assert loaded.dtype == np.float64
    assert loaded.layers[0].momentum is None and loaded.layers[0].eps == 1e-3
    assert not loaded.layers[3].affine
    x = np.random.default_rng(3).normal(size=(5, 6))
    assert model.predict(x).tobytes() == loaded.predict(x).tobytes()


def test_modes_predict_uses_inference_and_changes_nothing():
    model = trained_network()
    assert model.training
    before = snapshot(model)
    x = examples()
    predicted = model.predict(x)
    assert model.training  # predict leaves the mode alone
    assert_unchanged(model, before)
    assert model.eval() is model and not model.training
    assert model.forward(x).tobytes() == predicted.tobytes()
    assert_unchanged(model, before)
    assert model.train() is model and model.training
    training_output = model.forward(x)  # batch statistics, running ones updated
    assert not np.allclose(training_output, predicted)
    assert model.layers[0].num_batches_tracked == 4


def test_predict_flattens_images_and_casts_floats():
    model = trained_network(features=12, hidden=5)
    x = examples(6, 12)
    np.testing.assert_array_equal(
        model.predict(x.reshape(6, 3, 4).astype(np.float64)), model.predict(x)
    )


def test_evaluate_matches_a_float64_reference():
    model = trained_network()
    x = examples(50)
    y = np.random.default_rng(9).integers(0, CLASSES, 50)
    loss, accuracy = model.evaluate(x, y)
    logits = model.predict(x).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-log_probs[np.arange(50), y].mean(), rel=1e-12)
    assert accuracy == np.mean(logits.argmax(axis=1) == y)


@pytest.mark.parametrize(
    "x,y,error,match",
    [
        (np.zeros((4, 784), np.uint8), np.zeros(4, int), TypeError, "x must be floating"),
        (np.zeros((4, 783), np.float32), np.zeros(4, int), ValueError, r"x must have shape"),
        (np.zeros(784, np.float32), np.zeros(1, int), ValueError, r"x must have shape"),
        (np.zeros((4, 784), np.float32), np.zeros(3, int), ValueError, "labels must have shape"),
        (np.zeros((4, 784), np.float32), np.full(4, 0.5), TypeError, "labels must be integers"),
        (np.zeros((4, 784), np.float32), np.array([0, 1, 10, 2]), ValueError, "at index 2"),
    ],
)
def test_evaluate_rejects_bad_input_and_changes_nothing(x, y, error, match):
    model = trained_network()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        model.evaluate(x, y)
    assert_unchanged(model, before)


def other_architecture_state():
    return trained_network(hidden=32).state_dict()


def renamed(state):
    return {k.replace("3.", "2."): v for k, v in state.items()}


def with_entry(key, value):
    def change(state):
        return {**state, key: value}

    return change


@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda s: other_architecture_state(), ValueError, r"\['1.weight'\]: expected shape"),
        (renamed, KeyError, r"missing keys \['3.weight'"),
        (lambda s: {k: v for k, v in s.items() if k != "4.bias"}, KeyError, r"\['4.bias'\]"),
        (with_entry("5.weight", np.zeros(3, np.float32)), KeyError, r"unexpected keys \['5"),
        (with_entry("1.weight", np.zeros((784, 64), np.float32)), ValueError, r"'1.weight'"),
        (with_entry("3.running_var", np.ones(64)), TypeError, r"'3.running_var'.*float64"),
        (with_entry("0.num_batches_tracked", np.array(-1)), ValueError, "num_batches_tracked"),
        (with_entry("0.num_batches_tracked", np.array(1.5)), ValueError, "num_batches_tracked"),
        (lambda s: [1, 2], TypeError, "mapping"),
    ],
)
def test_load_state_dict_rejects_bad_state_and_leaves_the_model_untouched(change, error, match):
    model = trained_network()
    state = model.state_dict()
    state = {k: v + 1 if v.dtype.kind == "f" else v for k, v in state.items()}
    before = snapshot(model)
    with pytest.raises(error, match=match):
        model.load_state_dict(change(state))
    assert_unchanged(model, before)


def test_load_weights_from_another_architecture_names_the_array(tmp_path):
    trained_network(hidden=32).save(tmp_path / "other.npz")
    model = trained_network()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"other.npz: state_dict\['1.weight'\]: expected shape"):
        model.load_weights(tmp_path / "other.npz")
    assert_unchanged(model, before)
    trained_network(seed=4).save(tmp_path / "same.npz")
    model.load_weights(tmp_path / "same.npz")
    assert_unchanged(model, Sequential.load(tmp_path / "same.npz").state_dict())


@pytest.mark.parametrize(
    "cut,match",
    [
        (lambda size: 200, r"ends inside array '0.weight'"),
        (lambda size: size // 2, r"ends inside array '1.weight'"),
        (lambda size: size - 30, r"every array is complete.*index"),
    ],
)
def test_truncated_file_names_the_array(tmp_path, cut, match):
    model = trained_network()
    model.save(tmp_path / "m.npz")
    data = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: cut(len(data))])
    with pytest.raises(ValueError, match=r"cut.npz: corrupt .npz archive: truncated: .*" + match):
        Sequential.load(tmp_path / "cut.npz")
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        model.load_weights(tmp_path / "cut.npz")
    assert_unchanged(model, before)


def rewrite(path, target, **arrays):
    with np.load(path) as saved:
        contents = {k: saved[k] for k in saved.files}
    contents.update(arrays)
    np.savez(target, **{k: v for k, v in contents.items() if v is not None})


@pytest.mark.parametrize(
    "arrays,match",
    [
        ({ARCHITECTURE_KEY: None}, "not a model written by Sequential.save"),
        ({ARCHITECTURE_KEY: np.array("{not json")}, "not valid JSON"),
        ({ARCHITECTURE_KEY: np.array(json.dumps({"format": "x"}))}, "does not describe"),
        ({"1.weight": np.zeros((64, 784), np.float64)}, r"'1.weight'.*expected dtype float32"),
        ({"4.bias": np.zeros(11, np.float32)}, r"'4.bias'.*expected shape \(10,\)"),
        ({"1.bias": None}, r"missing keys \['1.bias'\]"),
    ],
)
def test_bad_model_files_are_rejected_naming_the_array(tmp_path, arrays, match):
    trained_network().save(tmp_path / "m.npz")
    rewrite(tmp_path / "m.npz", tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="bad.npz: .*" + match):
        Sequential.load(tmp_path / "bad.npz")


def test_unknown_layer_and_version_are_rejected(tmp_path):
    model = trained_network()
    model.save(tmp_path / "m.npz")
    description = model.architecture()
    description["layers"][2] = {"type": "Softplus"}
    rewrite(tmp_path / "m.npz", tmp_path / "a.npz", **{ARCHITECTURE_KEY: json.dumps(description)})
    with pytest.raises(ValueError, match="layer 2: unknown layer type 'Softplus'"):
        Sequential.load(tmp_path / "a.npz")
    description = {**model.architecture(), "version": 99}
    rewrite(tmp_path / "m.npz", tmp_path / "v.npz", **{ARCHITECTURE_KEY: json.dumps(description)})
    with pytest.raises(ValueError, match="format version 99"):
        Sequential.load(tmp_path / "v.npz")


@pytest.mark.parametrize("content", [b"", b"hello, not a zip", b"PK\x03\x04"])
def test_files_that_are_not_archives_are_rejected(tmp_path, content):
    (tmp_path / "m.npz").write_bytes(content)
    with pytest.raises(ValueError, match="m.npz: "):
        Sequential.load(tmp_path / "m.npz")


def test_corrupt_array_is_named(tmp_path):
    trained_network().save(tmp_path / "m.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as archive:
        info = archive.getinfo("1.weight.npy")
    data = bytearray((tmp_path / "m.npz").read_bytes())
    data[info.header_offset + 200] ^= 0xFF  # inside the data: the CRC no longer matches
    (tmp_path / "m.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="array '1.weight' cannot be read"):
        Sequential.load(tmp_path / "m.npz")


def test_a_layer_without_a_file_format_is_refused_before_writing(tmp_path):
    class Scale:
        def forward(self, x, training=True):
            return 2 * x

        def backward(self, dy):
            return 2 * dy

        def parameters(self):
            return []

        def gradients(self):
            return []

    model = Sequential([Dense(3, 2, rng=np.random.default_rng(0)), Scale()])
    assert list(model.state_dict()) == ["0.weight", "0.bias"]
    with pytest.raises(TypeError, match=r"layer 1 \(Scale\)"):
        model.save(tmp_path / "m.npz")
    assert not list(tmp_path.iterdir())


def test_dense_and_relu_write_into_out_what_they_return_without_it():
    rng = np.random.default_rng(0)
    dense = Dense(5, 3, rng=rng)
    x = rng.random((4, 5), dtype=np.float32)
    dy = rng.random((4, 3), dtype=np.float32)
    y = dense.forward(x)
    out = np.empty_like(y)
    assert dense.forward(x, out=out) is out and out.tobytes() == y.tobytes()
    dx = dense.backward(dy)
    dx_out = np.empty_like(dx)
    assert dense.backward(dy, out=dx_out) is dx_out and dx_out.tobytes() == dx.tobytes()
    relu = ReLU()
    h = x - 0.5
    r = relu.forward(h)
    r_out = np.empty_like(r)
    assert relu.forward(h, out=r_out) is r_out and r_out.tobytes() == r.tobytes()
    g = relu.backward(h)
    g_out = np.empty_like(g)
    assert relu.backward(h, out=g_out) is g_out and g_out.tobytes() == g.tobytes()
    np.testing.assert_array_equal(g, np.where(h > 0, h, 0))


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda d, x: d.forward(x[:, :4]), ValueError, r"Dense: x must have shape \(N, 5\)"),
        (lambda d, x: d.forward(x.astype(np.float64)), TypeError, "Dense: x must be float32"),
        (lambda d, x: d.forward(list(x)), TypeError, "Dense: x must be a NumPy array"),
        (lambda d, x: d.forward(x, out=np.empty((4, 2), np.float32)), ValueError, "Dense: out"),
        (lambda d, x: d.backward(np.ones((3, 3), np.float32)), ValueError, r"dy must have shape"),
        (lambda d, x: ReLU().forward(x.astype(int)), TypeError, "ReLU: x must be"),
    ],
)
def test_dense_and_relu_reject_bad_input_before_writing(call, error, match):
    rng = np.random.default_rng(0)
    dense = Dense(5, 3, rng=rng)
    x = rng.random((4, 5), dtype=np.float32)
    dense.forward(x)
    dense.backward(np.ones((4, 3), np.float32))
    before = [a.copy() for a in dense.parameters() + dense.gradients()]
    with pytest.raises(error, match=match):
        call(dense, x)
    for array, saved in zip(dense.parameters() + dense.gradients(), before, strict=True):
        assert array.tobytes() == saved.tobytes()
