"""The conformance kit itself: correct plugins pass, broken ones fail with a reason.

A numpy reference BatchNorm passes every normalization check; each broken
variant breaks one promise and must be caught. Likewise for schedulers.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import bnsgd_numba
from bnsgd_numba import Scheduler
from bnsgd_numba.testing import NormalizationCase, SchedulerCase, strategies
from bnsgd_numba.testing import checks as kit


class ReferenceBatchNorm:
    """Slow, obviously-correct BatchNorm in numpy (two-pass statistics in float64)."""

    def __init__(self, num_features, *, dtype=np.float64, channel_axis=1, eps=1e-5):
        self.c, self.dtype, self.axis, self.eps = num_features, np.dtype(dtype), channel_axis, eps
        self.weight = np.ones(num_features, self.dtype)
        self.bias = np.zeros(num_features, self.dtype)
        self.grad_weight = np.zeros_like(self.weight)
        self.grad_bias = np.zeros_like(self.bias)
        self.running_mean = np.zeros(num_features, self.dtype)
        self.running_var = np.ones(num_features, self.dtype)

    def _validate(self, x, training):
        if not isinstance(x, np.ndarray) or x.dtype != self.dtype:
            raise TypeError(f"x: expected a {self.dtype} array")
        if x.ndim < 2 or x.shape[self.axis % x.ndim] != self.c:
            raise ValueError(f"x: expected {self.c} channels on axis {self.axis}")
        if training and x.size // self.c < 2:
            raise ValueError("x: expected more than 1 value per channel when training")

    def _view(self, v, ndim):
        shape = [1] * ndim
        shape[self.axis % ndim] = self.c
        return np.asarray(v, np.float64).reshape(shape)

    def forward(self, x, training=True):
        self._validate(x, training)
        axes = tuple(i for i in range(x.ndim) if i != self.axis % x.ndim)
        x64 = x.astype(np.float64)
        if training:
            # shifted by one sample of each channel, so a constant channel gives exactly 0
            shift = np.moveaxis(x64, self.axis % x.ndim, 0).reshape(self.c, -1)[:, 0]
            mean = shift + (x64 - self._view(shift, x.ndim)).mean(axis=axes)
            var = ((x64 - self._view(mean, x.ndim)) ** 2).mean(axis=axes)
            m = x.size // self.c
            self.running_mean[...] = 0.9 * self.running_mean + 0.1 * mean
            self.running_var[...] = 0.9 * self.running_var + 0.1 * var * m / (m - 1)
        else:
            mean, var = self.running_mean, self.running_var
        invstd = 1.0 / np.sqrt(np.asarray(var, np.float64) + self.eps)
        x_hat = (x64 - self._view(mean, x.ndim)) * self._view(invstd, x.ndim)
        self._saved = (x_hat, invstd, axes, training)
        y = x_hat * self._view(self.weight, x.ndim) + self._view(self.bias, x.ndim)
        return y.astype(self.dtype)

    def backward(self, dy):
        x_hat, invstd, axes, training = self._saved
        if dy.shape != x_hat.shape:
            raise ValueError("dy: shape does not match the last input")
        dy64 = dy.astype(np.float64)
        dbias = dy64.sum(axis=axes)
        dweight = (dy64 * x_hat).sum(axis=axes)
        g = self._view(self.weight * invstd, dy.ndim)
        if training:
            m = dy.size // self.c
            dx = (
                g
                / m
                * (m * dy64 - self._view(dbias, dy.ndim) - x_hat * self._view(dweight, dy.ndim))
            )
        else:
            dx = dy64 * g
        self.grad_weight[...] = dweight
        self.grad_bias[...] = dbias
        return dx.astype(self.dtype)

    def state_dict(self):
        keys = ("weight", "bias", "running_mean", "running_var")
        return {k: getattr(self, k).copy() for k in keys}

    def load_state_dict(self, state):
        for key, value in state.items():
            getattr(self, key)[...] = value


class WrongGradient(ReferenceBatchNorm):
    def backward(self, dy):
        dx = super().backward(dy)
        if self._saved[3]:  # training: forget the mean term, a classic bug
            dx = (dy * self._view(self.weight * self._saved[1], dy.ndim)).astype(self.dtype)
        return dx


class NaiveVariance(ReferenceBatchNorm):
    """E[x^2] - E[x]^2 in the input dtype: cancels on offset channels."""

    def forward(self, x, training=True):
        self._validate(x, training)
        axes = tuple(i for i in range(x.ndim) if i != self.axis % x.ndim)
        mean = x.mean(axis=axes)
        var = np.maximum((x * x).mean(axis=axes) - mean * mean, 0)
        x_hat = (x - self._view(mean, x.ndim)) / np.sqrt(self._view(var, x.ndim) + self.eps)
        return x_hat.astype(self.dtype)


class WritesBeforeValidating(ReferenceBatchNorm):
    def forward(self, x, training=True):
        self.running_mean += 1.0
        return super().forward(x, training)


class UpcastsOutput(ReferenceBatchNorm):
    def forward(self, x, training=True):
        return super().forward(x, training).astype(np.float64)


class IgnoresStateDict(ReferenceBatchNorm):
    def load_state_dict(self, state):
        pass


class WrongWeightGradient(ReferenceBatchNorm):
    def backward(self, dy):
        dx = super().backward(dy)
        self.grad_weight *= 2
        return dx


class FlattensChannelsLast(ReferenceBatchNorm):
    """Returns channels-last output as (rows, C): right for rank 2 only."""

    def forward(self, x, training=True):
        y = super().forward(x, training)
        return y.reshape(-1, self.c) if self.axis % x.ndim == x.ndim - 1 else y


class UpcastsHighRank(ReferenceBatchNorm):
    def forward(self, x, training=True):
        y = super().forward(x, training)
        return y.astype(np.float64) if x.ndim >= 3 else y


def _case(cls, standardizes=True):
    return NormalizationCase(cls.__name__, cls, {}, standardizes)


def test_reference_batch_norm_passes_every_check():
    for check in kit.NORMALIZATION_CHECKS:
        check(_case(ReferenceBatchNorm))


@pytest.mark.parametrize(
    ("broken", "check", "message"),
    [
        (WrongGradient, kit.check_gradients, "finite differences"),
        (NaiveVariance, kit.check_standardizes, "channel"),
        (WritesBeforeValidating, kit.check_rejects_bad_input, "modified running_mean"),
        (UpcastsOutput, kit.check_dtype_and_shape_preserved, "output dtype"),
        (IgnoresStateDict, kit.check_state_dict_round_trip_layer, "differs after load"),
    ],
    ids=lambda v: getattr(v, "__name__", None) if isinstance(v, type) else None,
)
def test_broken_normalization_fails_its_check(broken, check, message):
    with pytest.raises(AssertionError, match=message):
        check(_case(broken))


# the reduced inputs the GPU tests use in the CUDA simulator
SMALL = {
    kit.check_gradients: [{"shape": (2, 3)}, {"shape": (2, 3, 2)}],
    kit.check_dtype_and_shape_preserved: [{"layouts": kit.SMALL_LAYOUTS}],
    kit.check_state_dict_round_trip_layer: [{"shape": (2, 3)}, {"shape": (2, 3, 2)}],
}


def test_reference_batch_norm_passes_every_check_on_small_inputs():
    for check, variants in SMALL.items():
        for small in variants:
            check(_case(ReferenceBatchNorm), **small)


@pytest.mark.parametrize(
    ("broken", "check", "message"),
    [
        (WrongGradient, kit.check_gradients, r"dx \(training\) differs from central"),
        (WrongWeightGradient, kit.check_gradients, r"grad_weight \(training\) differs"),
        (UpcastsOutput, kit.check_dtype_and_shape_preserved, "output dtype"),
        (FlattensChannelsLast, kit.check_dtype_and_shape_preserved, "axis -1 .* output shape"),
        (UpcastsHighRank, kit.check_dtype_and_shape_preserved, r"\(1, 3, 2\) .* output dtype"),
        (IgnoresStateDict, kit.check_state_dict_round_trip_layer, "differs after load"),
    ],
    ids=lambda v: getattr(v, "__name__", None) if isinstance(v, type) else None,
)
def test_broken_normalization_fails_its_check_on_small_inputs(broken, check, message):
    for small in SMALL[check]:
        with pytest.raises(AssertionError, match=message):
            check(_case(broken), **small)


@pytest.mark.parametrize(
    ("broken", "check"),
    [
        (WrongWeightGradient, kit.check_gradients),
        (FlattensChannelsLast, kit.check_dtype_and_shape_preserved),
        (UpcastsHighRank, kit.check_dtype_and_shape_preserved),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_the_default_inputs_catch_what_the_small_ones_catch(broken, check):
    with pytest.raises(AssertionError):
        check(_case(broken))


@pytest.mark.parametrize(
    ("check", "small", "message"),
    [
        (kit.check_gradients, {"shape": (2, 4, 2)}, "3 channels on axis 1"),
        (kit.check_gradients, {"shape": (3,)}, "rank 1"),
        (kit.check_gradients, {"shape": (0, 3)}, "empty axis"),
        (kit.check_state_dict_round_trip_layer, {"shape": (2, 2, 3)}, "3 channels on axis 1"),
        (kit.check_dtype_and_shape_preserved, {"layouts": [((2, 3, 4), -1)]}, "axis -1"),
        (kit.check_dtype_and_shape_preserved, {"layouts": []}, "nothing to check"),
    ],
    ids=lambda v: v.__name__.removeprefix("check_") if callable(v) else None,
)
def test_small_inputs_the_kit_cannot_use_are_refused(check, small, message):
    with pytest.raises(ValueError, match=message):
        check(_case(ReferenceBatchNorm), **small)


def test_a_reduced_layout_list_cannot_pass_by_leaving_every_layout_out():
    case = NormalizationCase("needs_rank_3", ReferenceBatchNorm, {}, min_rank=3)
    with pytest.raises(ValueError, match="nothing to check"):
        kit.check_dtype_and_shape_preserved(case, layouts=[((2, 3), 1)])
    with pytest.raises(ValueError, match="rank 2"):
        kit.check_gradients(case, shape=(2, 3))


# found by Hypothesis: a float64 constant channel whose sum / m rounds (not exactly x)
CONSTANT_FLOAT64 = np.full((10, 1), 1.7974005664190091)


@settings(max_examples=30)
@given(x=strategies.normalization_inputs())
@example(x=CONSTANT_FLOAT64)
@example(x=np.full((3, 1, 3), 0.38411168))
def test_batch_norm_standardizes_hypothesis_inputs(x):
    case = bnsgd_numba.testing.normalization_cases(["batch_norm"])[0]
    kit.check_standardizes(case, x)


@settings(max_examples=30)
@given(x=strategies.normalization_inputs(channel_axis=-1))
@example(x=CONSTANT_FLOAT64)
@example(x=np.array([[3.64152383e-195], [0.0]]))
def test_reference_standardizes_channels_last_inputs(x):
    moved = np.moveaxis(x, -1, 1)
    kit.check_standardizes(_case(ReferenceBatchNorm), np.ascontiguousarray(moved))


@given(shape=strategies.batch_shapes(3, channel_axis=-1))
def test_batch_shapes_put_channels_where_asked(shape):
    assert shape[-1] == 3 and int(np.prod(shape)) // 3 >= 2


# -- schedulers ------------------------------------------------------------------------


class Halving(Scheduler):
    """Correct: halves every 10 steps."""

    def __init__(self, *, base_lr):
        super().__init__(base_lr=base_lr)

    def lr_at(self, step):
        return self.base_lr * 0.5 ** (step // 10)


class DriftingStep(Halving):
    """step() does not follow lr_at()."""

    def _advance(self, metric):
        return self._lr * 0.999


class GoesNegative(Halving):
    def lr_at(self, step):
        return self.base_lr - 0.01 * step


class Noisy(Halving):
    def lr_at(self, step):
        return self.base_lr * random.random()


class ForgetsState(Halving):
    """Counts steps itself and does not save the count."""

    def __init__(self, *, base_lr):
        self.count = 0
        super().__init__(base_lr=base_lr)

    def lr_at(self, step):
        return self.base_lr * 0.5 ** (step // 10)

    def _advance(self, metric):
        self.count += 1
        return self.lr_at(self.count)

    def load_state_dict(self, state):
        self._lr = state["lr"]


class NeverTellsOptimizer(Halving):
    def _apply(self):
        pass


class ReturnsInt(Halving):
    def step(self, metric=None):
        return int(super().step(metric))


class OverflowsFar(Halving):
    """Grows without a guard: a bare OverflowError at far steps."""

    def lr_at(self, step):
        return self.base_lr * 1.01**step


class NegativeFar(Halving):
    def lr_at(self, step):
        return self.base_lr if step < 10**5 else -self.base_lr


class LoadsHalfTheState(Halving):
    """Takes the step count before the rest of the state is checked."""

    def load_state_dict(self, state):
        if isinstance(state, dict):
            self.last_step = state.get("last_step", self.last_step)
        super().load_state_dict(state)


class CountsBeforeCheckingTheMetric(Halving):
    requires_metric = True

    def lr_at(self, step):
        return self.base_lr * 0.5 ** (step // 10)

    def step(self, metric=None):
        self.last_step += 1
        self._lr = self.lr_at(self.last_step) * (float(metric) >= 0)
        return self._lr


class AdvancesBeforeTheOptimizerAgrees(Halving):
    """Commits the step, then sets the optimizer's rate (which may refuse it)."""

    def step(self, metric=None):
        self.last_step += 1
        self._lr = self.lr_at(self.last_step)
        self.optimizer.lr = self._lr
        return self._lr


def _scase(cls):
    return SchedulerCase(cls.__name__, lambda: cls(base_lr=0.1), steps=60)


def test_correct_scheduler_passes_every_check():
    for check in kit.SCHEDULER_CHECKS:
        check(_scase(Halving))


@pytest.mark.parametrize(
    ("broken", "check", "message"),
    [
        (DriftingStep, kit.check_lr_at_matches_step, "stepping gives"),
        (GoesNegative, kit.check_lr_finite_nonnegative, "learning rate"),
        (Noisy, kit.check_deterministic, "disagree"),
        (ForgetsState, kit.check_state_dict_round_trip, "resumed at step"),
        (NeverTellsOptimizer, kit.check_bound_optimizer_follows, "optimizer lr"),
        (ReturnsInt, kit.check_lr_finite_nonnegative, "not float"),
        (OverflowsFar, kit.check_rates_at_far_steps, "OverflowError"),
        (NegativeFar, kit.check_rates_at_far_steps, "learning rate -0.1"),
        (LoadsHalfTheState, kit.check_bad_input_changes_nothing, "raised but changed the state"),
        (CountsBeforeCheckingTheMetric, kit.check_bad_input_changes_nothing, "changed the state"),
        (AdvancesBeforeTheOptimizerAgrees, kit.check_refused_rate_changes_nothing, "changed"),
    ],
    ids=lambda v: getattr(v, "__name__", None) if isinstance(v, type) else None,
)
def test_broken_scheduler_fails_its_check(broken, check, message):
    with pytest.raises(AssertionError, match=message):
        check(_scase(broken))


@settings(max_examples=25)
@given(base_lr=strategies.learning_rates(), data=st.data())
def test_builtin_schedules_resume_at_any_step(base_lr, data):
    name = data.draw(st.sampled_from(["cosine", "cyclic", "warmup_cosine", "sequential"]))
    params = data.draw(strategies.scheduler_params(name))
    params["base_lr"] = base_lr
    case = SchedulerCase(name, lambda: bnsgd_numba.create_scheduler(name, **params), steps=80)
    kit.check_state_dict_round_trip(case)
    kit.check_lr_at_matches_step(case)


@given(metrics=strategies.metric_sequences(min_size=5, max_size=40))
def test_plateau_after_warmup_resumes_on_any_metrics(metrics):
    def make():
        return bnsgd_numba.create_scheduler(
            "sequential",
            base_lr=0.1,
            schedulers=[("linear", {"total_iters": 3}), ("reduce_on_plateau", {"patience": 1})],
            milestones=[3],
        )

    case = SchedulerCase("warmup-plateau", make, steps=len(metrics), metrics=tuple(metrics))
    kit.check_state_dict_round_trip(case)
    kit.check_deterministic(case)
