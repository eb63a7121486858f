"""Bad input gets a clear error naming the argument, and nothing is modified."""

from __future__ import annotations

import numpy as np
import pytest

import bnsgd_numba as bn

C = 3


def fresh():
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((4, C, 5)).astype(np.float32),
        "weight": np.full(C, 2.0, np.float32),
        "bias": np.full(C, 0.5, np.float32),
        "running_mean": np.full(C, 0.25, np.float32),
        "running_var": np.full(C, 1.5, np.float32),
    }


def call(args, **overrides):
    keywords = {"training": True, **overrides}
    return bn.batch_norm_forward(
        keywords.pop("x", args["x"]),
        keywords.pop("weight", args["weight"]),
        keywords.pop("bias", args["bias"]),
        keywords.pop("running_mean", args["running_mean"]),
        keywords.pop("running_var", args["running_var"]),
        **keywords,
    )


OUT = np.full((4, C, 5), 9.0, np.float32)

BAD_FORWARD = {
    "one value per channel": (
        dict(x=np.ones((1, C), np.float32)),
        ValueError,
        "more than 1 value per channel",
    ),
    "one value per channel 3d": (
        dict(x=np.ones((1, C, 1), np.float32)),
        ValueError,
        "x: expected more than 1",
    ),
    "weight length": (
        dict(weight=np.ones(C + 1, np.float32)),
        ValueError,
        r"weight: expected shape \(3,\)",
    ),
    "bias length": (dict(bias=np.ones(C - 1, np.float32)), ValueError, "bias: expected shape"),
    "running_mean length": (
        dict(running_mean=np.ones(2, np.float32)),
        ValueError,
        "running_mean: expected shape",
    ),
    "running_var length": (
        dict(running_var=np.ones(4, np.float32)),
        ValueError,
        "running_var: expected shape",
    ),
    "weight dtype": (
        dict(weight=np.ones(C, np.float64)),
        TypeError,
        "weight: dtype float64 does not match",
    ),
    "running_var dtype": (
        dict(running_var=np.ones(C, np.float64)),
        TypeError,
        "running_var: dtype",
    ),
    "integer input": (
        dict(x=np.ones((4, C), np.int64)),
        TypeError,
        "x: dtype must be float32 or float64",
    ),
    "float16 input": (
        dict(x=np.ones((4, C), np.float16)),
        TypeError,
        "x: dtype must be float32 or float64",
    ),
    "rank 1": (dict(x=np.ones(C, np.float32)), ValueError, "x: expected an array of rank >= 2"),
    "channel_axis out of range": (
        dict(channel_axis=3),
        ValueError,
        "channel_axis=3 is out of range",
    ),
    "channel_axis not an int": (
        dict(channel_axis=1.0),
        TypeError,
        "channel_axis must be an integer",
    ),
    "eps zero": (dict(eps=0.0), ValueError, "eps must be a finite number > 0"),
    "eps negative": (dict(eps=-1e-5), ValueError, "eps must be"),
    "eps nan": (dict(eps=float("nan")), ValueError, "eps must be"),
    "momentum above 1": (dict(momentum=1.5), ValueError, r"momentum must be a number in \[0, 1\]"),
    "momentum negative": (dict(momentum=-0.1), ValueError, "momentum must be"),
    "training not bool": (dict(training="yes"), TypeError, "training must be True or False"),
    "out shape": (dict(out=np.empty((4, C, 6), np.float32)), ValueError, "out: shape"),
    "out dtype": (dict(out=np.empty((4, C, 5), np.float64)), TypeError, "out: dtype"),
    "out not an array": (dict(out=[0.0]), TypeError, "out must be a NumPy array"),
    "only one running statistic": (dict(running_var=None), ValueError, "running_var is None"),
    "eval without running statistics": (
        dict(training=False, running_mean=None, running_var=None),
        ValueError,
        "required when training=False",
    ),
    "on_nonfinite": (dict(on_nonfinite="ignore"), ValueError, "on_nonfinite must be"),
    "read-only running_mean": (
        dict(running_mean=np.zeros(C, np.float32)),
        ValueError,
        "running_mean is read-only",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FORWARD))
def test_bad_forward_input_raises_before_anything_is_written(case):
    overrides, error, message = BAD_FORWARD[case]
    args = fresh()
    if case == "read-only running_mean":
        overrides["running_mean"].flags.writeable = False
    before = {key: value.copy() for key, value in args.items()}
    out = overrides.setdefault("out", OUT.copy()) if "out" not in overrides else overrides["out"]
    out_before = np.array(out, copy=True) if isinstance(out, np.ndarray) else None
    with pytest.raises(error, match=message):
        call(args, **overrides)
    for key, value in args.items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    if out_before is not None:
        np.testing.assert_array_equal(out, out_before)


def test_out_aliasing_the_input_is_rejected():
    args = fresh()
    before = args["running_mean"].copy()
    with pytest.raises(ValueError, match="out overlaps the input x"):
        call(args, out=args["x"])
    with pytest.raises(ValueError, match="out overlaps the input x"):
        x = np.zeros((4, C, 10), np.float32)
        call(args, x=x[..., :5], out=x[..., 3:8])
    np.testing.assert_array_equal(args["running_mean"], before)


BAD_BACKWARD = {
    "dy shape": (dict(dy=np.ones((4, C, 6), np.float32)), ValueError, "dy: shape"),
    "dy dtype": (
        dict(dy=np.ones((4, C, 5), np.float64)),
        TypeError,
        "dy: dtype float64 does not match",
    ),
    "save_mean length": (
        dict(save_mean=np.ones(C + 1, np.float32)),
        ValueError,
        "save_mean: expected shape",
    ),
    "save_invstd missing": (dict(save_invstd=None), ValueError, "save_invstd is required"),
    "weight dtype": (dict(weight=np.ones(C, np.float64)), TypeError, "weight: dtype"),
    "channel_axis": (dict(channel_axis=-4), ValueError, "channel_axis=-4 is out of range"),
    "out aliasing dy": ("alias", ValueError, "out overlaps"),
}


@pytest.mark.parametrize("case", sorted(BAD_BACKWARD))
def test_bad_backward_input_raises_before_anything_is_written(case):
    overrides, error, message = BAD_BACKWARD[case]
    args = fresh()
    out = bn.batch_norm_forward(args["x"], training=True)
    dy = np.ones_like(args["x"])
    keywords = dict(dy=dy, x=args["x"], weight=args["weight"], save_mean=out.save_mean,
                    save_invstd=out.save_invstd)  # fmt: skip
    extra = {}
    if overrides == "alias":
        extra["out"] = dy
    else:
        keywords.update({k: v for k, v in overrides.items() if k in keywords})
        extra = {k: v for k, v in overrides.items() if k not in keywords}
    before = {k: np.array(v, copy=True) for k, v in keywords.items() if v is not None}
    with pytest.raises(error, match=message):
        bn.batch_norm_backward(
            keywords["dy"], keywords["x"], keywords["weight"], keywords["save_mean"],
            keywords["save_invstd"], **extra,
        )  # fmt: skip
    for key, value in before.items():
        np.testing.assert_array_equal(keywords[key], value)
