"""Conformance checks for scheduler and normalization plugins.

Each check takes a case (:mod:`bnsgd_numba.testing.cases`) and raises
``AssertionError`` with an explanation when the plugin breaks the contract;
it returns None otherwise. :data:`SCHEDULER_CHECKS` and
:data:`NORMALIZATION_CHECKS` list them; :mod:`bnsgd_numba.testing.parametrize`
turns them into pytest cases.

The scheduler contract (that of the built-ins, see
:class:`bnsgd_numba.Scheduler`): every rate is a finite float >= 0 at every
step the schedule accepts, far steps included (a step it cannot give a rate
for raises ``ValueError``); ``lr_at`` agrees with stepping; ``state_dict``
round trips; and ``step``, ``bind`` and ``load_state_dict`` either succeed
or raise ``ValueError``/``TypeError`` and change nothing, the bound
optimizer's ``lr`` and ``momentum`` included, also when the optimizer
refuses a rate.

The normalization contract (that of :class:`bnsgd_numba.BatchNorm`): the
factory takes ``(num_features, *, dtype, channel_axis)``; the layer has
``forward(x, training=True)``, ``backward(dy) -> dx`` (filling
``grad_weight``/``grad_bias`` when it has ``weight``/``bias``),
``state_dict()`` / ``load_state_dict()``; it accepts float arrays of its
dtype with ``num_features`` channels on ``channel_axis`` and rejects other
input with ``ValueError``/``TypeError`` before modifying anything.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bnsgd_numba.testing.cases import NormalizationCase, SchedulerCase

# -- schedulers -------------------------------------------------------------------------

#: Steps far past any training run that every schedule must handle (capped at ``max_step``):
#: a finite rate >= 0, or a ``ValueError`` refusing the step, never another error.
FAR_STEPS = (10**6, 10**9, 10**12, 2**53 + 1, 2**63 - 1)


def _run(case: SchedulerCase, sched: Any, first: int, last: int) -> list[float]:
    """Step ``sched`` from step ``first`` to ``last`` (1-based), returning the rates."""
    out = []
    for t in range(first, last + 1):
        metric = case.metric(t) if sched.requires_metric else None
        try:
            out.append(sched.step(metric))
        except Exception as exc:
            raise AssertionError(f"{case.id}: step {t} raised {type(exc).__name__}: {exc}") from exc
    return out


def _assert_rate(case: SchedulerCase, what: str, value: Any) -> None:
    assert isinstance(value, float), f"{case.id}: {what} gave {type(value).__name__}, not float"
    assert math.isfinite(value) and value >= 0, f"{case.id}: learning rate {value!r} at {what}"


def check_lr_finite_nonnegative(case: SchedulerCase) -> None:
    """Every learning rate (and momentum), and ``step()``'s return type, is a finite float >= 0."""
    sched = case.make()
    rates = [sched.lr, *_run(case, sched, 1, case.steps)]
    probe = case.make()
    for t, lr in enumerate(rates):
        _assert_rate(case, f"step {t}", lr)
        if not probe.requires_metric:
            _assert_rate(case, f"lr_at({t})", probe.lr_at(t))
        momentum = probe.momentum_at(t)
        if momentum is not None:
            assert isinstance(momentum, float) and math.isfinite(momentum) and momentum >= 0, (
                f"{case.id}: momentum {momentum!r} at step {t}"
            )


def _far_value(case: SchedulerCase, what: str, compute: Callable[[], Any]) -> Any:
    """``compute()``: a rate, or None if it refused the step with ValueError."""
    try:
        return compute()
    except ValueError:
        return None
    except Exception as exc:
        raise AssertionError(
            f"{case.id}: {what} raised {type(exc).__name__}: {exc} (a schedule either gives "
            "a finite rate >= 0 or refuses the step with ValueError)"
        ) from exc


def check_rates_at_far_steps(case: SchedulerCase) -> None:
    """Far steps (up to ``2**63 - 1`` or ``max_step``) give finite rates >= 0 or a ValueError.

    For each of :data:`FAR_STEPS`, ``lr_at`` and ``momentum_at`` (closed-form
    schedules), and a schedule resumed there through ``load_state_dict`` and
    stepped once: a float, finite and >= 0, or ``ValueError`` (the schedule
    refuses that step; then nothing changed). An ``OverflowError``, a
    ``ZeroDivisionError`` or a negative or non-finite rate fails.
    """
    template = case.make()
    last = template.max_step
    steps = sorted({min(n, last) for n in FAR_STEPS} if last is not None else set(FAR_STEPS))
    for n in steps:
        lr = None
        if not template.requires_metric:
            lr = _far_value(case, f"lr_at({n})", lambda n=n: template.lr_at(n))
            if lr is not None:
                _assert_rate(case, f"lr_at({n})", lr)
        momentum = _far_value(case, f"momentum_at({n})", lambda n=n: template.momentum_at(n))
        if momentum is not None:
            assert isinstance(momentum, float) and math.isfinite(momentum) and momentum >= 0, (
                f"{case.id}: momentum {momentum!r} at step {n}"
            )
        state = {**case.make().state_dict(), "last_step": n}
        if lr is not None:
            state["lr"] = lr
        resumed = case.make()
        try:
            resumed.load_state_dict(state)
        except Exception as exc:
            raise AssertionError(
                f"{case.id}: resuming at step {n} raised {type(exc).__name__}: {exc}"
            ) from exc
        before = resumed.state_dict()
        metric = case.metric(1) if resumed.requires_metric else None
        stepped = _far_value(case, f"step() resumed at {n}", lambda r=resumed, m=metric: r.step(m))
        if stepped is None:
            assert resumed.state_dict() == before, (
                f"{case.id}: step() resumed at {n} refused the step but changed the state"
            )
        else:
            _assert_rate(case, f"step {n + 1} (resumed at {n})", stepped)


def check_lr_at_matches_step(case: SchedulerCase) -> None:
    """``lr_at(t)`` equals the rate after ``t`` steps (closed-form schedules), and ``lr``."""
    sched = case.make()
    fresh = case.make()
    assert sched.lr == sched.lr_at(0), f"{case.id}: lr {sched.lr!r} != lr_at(0)"
    for t in range(1, case.steps + 1):
        stepped = _run(case, sched, t, t)[0]
        assert stepped == sched.lr, f"{case.id}: step() returned {stepped!r}, lr is {sched.lr!r}"
        assert sched.get_last_lr() == [stepped], f"{case.id}: get_last_lr() != [lr] at {t}"
        if sched.requires_metric:
            assert sched.lr_at(t) == stepped, f"{case.id}: lr_at(current step) != lr at {t}"
            continue
        closed = fresh.lr_at(t)
        assert math.isclose(closed, stepped, rel_tol=1e-12, abs_tol=0.0), (
            f"{case.id}: lr_at({t}) = {closed!r} but stepping gives {stepped!r}"
        )


def check_state_dict_round_trip(case: SchedulerCase) -> None:
    """A schedule resumed from ``state_dict()`` continues identically; the state is plain data."""
    whole = _run(case, case.make(), 1, case.steps)
    for split in sorted({0, 1, case.steps // 3, case.steps - 1}):
        if not 0 <= split < case.steps:
            continue
        first = case.make()
        _run(case, first, 1, split)
        state = first.state_dict()
        try:
            json.dumps(state)
        except TypeError as exc:
            raise AssertionError(f"{case.id}: state_dict is not plain data: {exc}") from None
        resumed = case.make()
        resumed.load_state_dict(copy.deepcopy(state))
        assert resumed.lr == first.lr, f"{case.id}: lr not restored at step {split}"
        rest = _run(case, resumed, split + 1, case.steps)
        assert rest == whole[split:], (
            f"{case.id}: resumed at step {split}, the rates differ from an unbroken run"
        )


def check_deterministic(case: SchedulerCase) -> None:
    """Two schedulers built alike give bitwise identical rates."""
    a = _run(case, case.make(), 1, case.steps)
    b = _run(case, case.make(), 1, case.steps)
    assert a == b, f"{case.id}: two identical schedulers disagree"


class _StandInOptimizer:
    """The attributes a scheduler binds to."""

    def __init__(self) -> None:
        self.lr = -1.0
        self.momentum = -1.0


class _PickyOptimizer:
    """An optimizer whose ``lr`` (or ``momentum``) setter refuses values while armed."""

    def __init__(self) -> None:
        self._lr, self._momentum = 0.5, 0.5
        self.refuse: str | None = None

    def _set(self, name: str, value: float) -> None:
        if self.refuse == name:
            raise ValueError(f"{name}: refused by the optimizer")
        setattr(self, f"_{name}", value)

    lr = property(lambda self: self._lr, lambda self, v: self._set("lr", v))
    momentum = property(lambda self: self._momentum, lambda self, v: self._set("momentum", v))


def check_bound_optimizer_follows(case: SchedulerCase) -> None:
    """A bound optimizer's ``lr`` (and scheduled momentum) follows every step."""
    sched = case.make()
    opt = _StandInOptimizer()
    assert sched.bind(opt) is sched, f"{case.id}: bind() must return the scheduler"
    for t in range(0, min(case.steps, 50) + 1):
        if t:
            _run(case, sched, t, t)
        assert opt.lr == sched.lr, f"{case.id}: optimizer lr {opt.lr!r} != {sched.lr!r} at {t}"
        momentum = sched.momentum
        if momentum is not None:
            assert opt.momentum == momentum, f"{case.id}: optimizer momentum not set at {t}"


def _observed(sched: Any, opt: Any) -> tuple[Any, ...]:
    return (sched.state_dict(), sched.lr, sched.last_step, opt.lr, opt.momentum)


def _assert_refused(
    case: SchedulerCase, what: str, call: Callable[[], Any], sched: Any, opt: Any
) -> None:
    before = _observed(sched, opt)
    try:
        call()
    except (TypeError, ValueError):
        pass
    except Exception as exc:
        raise AssertionError(
            f"{case.id}: {what} raised {type(exc).__name__}, not ValueError/TypeError: {exc}"
        ) from exc
    else:
        raise AssertionError(f"{case.id}: {what} was accepted")
    assert _observed(sched, opt) == before, f"{case.id}: {what} raised but changed the state"


def _bad_states(state: dict[str, Any]) -> list[tuple[str, Any]]:
    bad: list[tuple[str, Any]] = [("None", None), ("a list", [state]), ("an empty dict", {})]
    for key in ("scheduler", "last_step", "lr"):
        bad.append((f"no {key!r}", {k: v for k, v in state.items() if k != key}))
    values = {
        "scheduler": ["NotThisOne", None],
        "last_step": [-1, 1.5, "3", True, None],
        "lr": [math.nan, -1.0, math.inf, "0.1", None],
    }
    if "base_lr" in state:
        values["base_lr"] = [-1.0, math.nan, "0.1"]
    for key, options in values.items():
        bad.extend((f"{key}={v!r}", {**state, key: v}) for v in options)
    return bad


def check_bad_input_changes_nothing(case: SchedulerCase) -> None:
    """Bad states and metrics raise ValueError/TypeError and change nothing.

    ``load_state_dict`` gets non-dicts, states without a required key or
    with a bad ``last_step``, ``lr``, ``base_lr`` or ``scheduler``, and each
    extra key left out (an optional one may load); a metric-driven schedule
    gets metrics that are not numbers. After each, the scheduler and its
    bound optimizer must be as before, and the run continues as an
    untouched twin's.
    """
    done = min(3, case.steps)
    sched, opt = case.make(), _StandInOptimizer()
    sched.bind(opt)
    _run(case, sched, 1, done)
    state = sched.state_dict()
    for label, bad in _bad_states(state):
        _assert_refused(
            case, f"load_state_dict({label})", lambda b=bad: sched.load_state_dict(b), sched, opt
        )
    for key in [k for k in state if k not in ("scheduler", "last_step", "lr", "base_lr")]:
        before = _observed(sched, opt)
        try:
            sched.load_state_dict({k: v for k, v in state.items() if k != key})
        except (TypeError, ValueError):
            assert _observed(sched, opt) == before, (
                f"{case.id}: load_state_dict without {key!r} raised but changed the state"
            )
        sched.load_state_dict(copy.deepcopy(state))
    if sched.requires_metric:
        for bad_metric in ("abc", [1.0], None, b"1", {"loss": 1.0}):
            _assert_refused(
                case, f"step({bad_metric!r})", lambda m=bad_metric: sched.step(m), sched, opt
            )
    twin = case.make()
    _run(case, twin, 1, done)
    last = min(case.steps, done + 5)
    assert _run(case, sched, done + 1, last) == _run(case, twin, done + 1, last), (
        f"{case.id}: after the refused inputs the rates differ from an untouched twin's"
    )


def check_refused_rate_changes_nothing(case: SchedulerCase) -> None:
    """A rate the bound optimizer refuses leaves the scheduler and the optimizer as they were.

    The optimizer refuses ``lr`` (then ``momentum``, when the schedule
    cycles it) on ``bind`` and on a ``step``: the error passes through, the
    scheduler is not bound or not advanced, the optimizer keeps its values,
    and once the optimizer accepts again the run continues as an untouched
    twin's.
    """
    names = ["lr"] + (["momentum"] if case.make().momentum is not None else [])
    for name in names:
        sched, opt = case.make(), _PickyOptimizer()
        opt.refuse = name
        before = (sched.last_step, sched.lr, sched.optimizer, opt.lr, opt.momentum)
        try:
            sched.bind(opt)
        except ValueError:
            pass
        else:
            raise AssertionError(f"{case.id}: bind() did not pass the optimizer's error on")
        after = (sched.last_step, sched.lr, sched.optimizer, opt.lr, opt.momentum)
        assert after == before, f"{case.id}: a refused bind() changed the scheduler or optimizer"
        opt.refuse = None
        sched.bind(opt)
        done = min(2, case.steps - 1)
        _run(case, sched, 1, done)
        opt.refuse = name
        metric = case.metric(done + 1) if sched.requires_metric else None
        _assert_refused(
            case, f"step() with {name} refused", lambda m=metric, s=sched: s.step(m), sched, opt
        )
        opt.refuse = None
        twin = case.make()
        _run(case, twin, 1, done)
        last = min(case.steps, done + 5)
        assert _run(case, sched, done + 1, last) == _run(case, twin, done + 1, last), (
            f"{case.id}: after a refused {name} the rates differ from an untouched twin's"
        )


SCHEDULER_CHECKS: tuple[Callable[[SchedulerCase], None], ...] = (
    check_lr_finite_nonnegative,
    check_rates_at_far_steps,
    check_lr_at_matches_step,
    check_state_dict_round_trip,
    check_deterministic,
    check_bound_optimizer_follows,
    check_bad_input_changes_nothing,
    check_refused_rate_changes_nothing,
)

# -- normalizations --------------------------------------------------------------------


def _reduce_axes(x: np.ndarray, channel_axis: int) -> tuple[int, ...]:
    axis = channel_axis % x.ndim
    return tuple(i for i in range(x.ndim) if i != axis)


def _reset_affine(layer: Any) -> None:
    for name, value in (("weight", 1.0), ("bias", 0.0)):
        param = getattr(layer, name, None)
        if param is not None:
            param[...] = value


def default_normalization_inputs() -> list[np.ndarray]:
    """Return fixed inputs with ill-conditioned offsets and a constant channel, 3 channels.

    Returns
    -------
    list of ndarray
        Float64 and float32 arrays of shape (N, 3, ...), channel axis 1.
    """
    rng = np.random.default_rng(1234)
    plain = rng.standard_normal((8, 3, 5))
    offset = 1e4 + 1e-2 * rng.standard_normal((16, 3, 4))
    mixed = np.stack(
        [
            100.0 + rng.standard_normal(64),  # |mean| / std = 100
            np.full(64, 3.0),  # constant: must give exactly 0, not NaN
            1e-3 * rng.standard_normal(64),  # tiny spread
        ],
        axis=1,
    )
    return [plain, offset, mixed.astype(np.float32), plain.astype(np.float32)]


def check_standardizes(case: NormalizationCase, x: np.ndarray | None = None) -> None:
    """Training output has per-channel mean 0 and variance ``var/(var + eps)``; constant -> 0.

    Parameters
    ----------
    case : NormalizationCase
        A case whose registration promises ``standardizes=True``.
    x : ndarray, optional
        Input with channels on axis 1; the default inputs when None.

    Notes
    -----
    The tolerance is ``32 * eps(dtype) * (1 + |mean| / std)`` per channel: the
    rounding of the mean to the input dtype is amplified by the condition
    ``|mean| / std``, nothing else should be.
    """
    inputs = default_normalization_inputs() if x is None else [np.asarray(x)]
    for data in inputs:
        layer = case.make(data.shape[1], dtype=data.dtype)
        _reset_affine(layer)
        y = np.asarray(layer.forward(data, training=True))
        axes = _reduce_axes(data, 1)
        x64 = data.astype(np.float64)
        mean = x64.mean(axis=axes)
        var = x64.var(axis=axes)
        eps = float(getattr(layer, "eps", 1e-5))
        y64 = y.astype(np.float64)
        unit = float(np.finfo(data.dtype).eps)
        assert np.isfinite(y64).all(), f"{case.id}: non-finite output for finite input"
        for c in range(data.shape[1]):
            yc = np.take(y64, c, axis=1)
            xc = np.take(x64, c, axis=1)
            if np.all(xc == xc.flat[0]):
                assert np.all(yc == 0), f"{case.id}: constant channel {c} gave {yc.flat[0]!r}"
                continue
            if var[c] == 0:
                # a spread whose squares underflow: the output is the deviations
                # over sqrt(eps), far below any tolerance of the checks below
                bound = 2 * np.abs(xc - mean[c]).max() / math.sqrt(eps)
                assert np.all(np.abs(yc) <= bound), f"{case.id}: channel {c} gave {yc!r}"
                continue
            cond = 1.0 + abs(mean[c]) / math.sqrt(var[c])
            tol = 32 * unit * cond
            assert abs(yc.mean()) <= tol, (
                f"{case.id}: channel {c} mean {yc.mean():.3e} > {tol:.1e} ({data.dtype})"
            )
            expected_var = var[c] / (var[c] + eps)
            assert abs(yc.var() - expected_var) <= 2 * tol * max(1.0, np.abs(yc).max()), (
                f"{case.id}: channel {c} variance {yc.var()!r}, expected {expected_var!r}"
            )


def _finite_difference(loss: Callable[[], float], array: np.ndarray, h: float) -> np.ndarray:
    grad = np.zeros_like(array)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        step = h * max(1.0, abs(saved))
        flat[i] = saved + step
        up = loss()
        flat[i] = saved - step
        down = loss()
        flat[i] = saved
        gflat[i] = (up - down) / (2 * step)
    return grad


def _assert_close_grad(case_id: str, what: str, analytic: Any, numeric: np.ndarray) -> None:
    analytic = np.asarray(analytic, dtype=np.float64)
    scale = max(1.0, float(np.abs(numeric).max()))
    err = float(np.abs(analytic - numeric).max())
    assert err <= 1e-6 * scale, (
        f"{case_id}: {what} differs from central finite differences by {err:.2e} "
        f"(scale {scale:.2e})"
    )


def _checked_shape(
    case: NormalizationCase, shape: tuple[int, ...], channel_axis: int, name: str
) -> tuple[int, ...]:
    """Return ``shape`` as a tuple, or raise ValueError if the kit cannot use it."""
    shape = tuple(int(n) for n in shape)
    if len(shape) < max(2, case.min_rank):
        raise ValueError(
            f"{name}: {shape} has rank {len(shape)}, {case.id} needs rank >= "
            f"{max(2, case.min_rank)}"
        )
    if not -len(shape) <= channel_axis < len(shape) or shape[channel_axis] != 3:
        raise ValueError(f"{name}: {shape} needs 3 channels on axis {channel_axis}")
    if min(shape) < 1:
        raise ValueError(f"{name}: {shape} has an empty axis")
    return shape


def check_gradients(case: NormalizationCase, *, shape: tuple[int, ...] | None = None) -> None:
    """``backward`` matches central finite differences of ``sum(y * r)`` in float64.

    Checks dx in training and eval mode, and ``grad_weight``/``grad_bias``
    when the layer has ``weight``/``bias``.

    Parameters
    ----------
    case : NormalizationCase
        The layer to check.
    shape : tuple of int, optional
        Shape of the input, 3 channels on axis 1, rank at least
        ``case.min_rank``; ``(4, 3, 5)`` when None. A smaller one, such as
        ``(2, 3, 2)``, checks the same derivatives with fewer forwards (two
        per input element and per parameter, in each mode): for slow
        backends, such as the CUDA simulator.

    Raises
    ------
    ValueError
        If ``shape`` has no 3 channels on axis 1 or too low a rank.
    """
    shape = (4, 3, 5) if shape is None else _checked_shape(case, shape, 1, "shape")
    rng = np.random.default_rng(7)
    spread = (1, 3) + (1,) * (len(shape) - 2)
    x = rng.standard_normal(shape) * rng.uniform(0.5, 2.0, spread) + 0.5
    r = rng.standard_normal(x.shape)
    for training in (True, False):
        layer = case.make(3, dtype=np.float64)
        if not training:
            for _ in range(3):
                layer.forward(rng.standard_normal(x.shape) * 2 + 1, training=True)
        for name in ("weight", "bias"):
            param = getattr(layer, name, None)
            if param is not None:
                param[...] = rng.uniform(0.5, 1.5, param.shape)
        layer.forward(x, training=training)
        dx = np.array(layer.backward(r), dtype=np.float64)
        mode = "training" if training else "eval"

        def loss(layer: Any = layer, training: bool = training) -> float:
            return float(np.sum(np.asarray(layer.forward(x, training=training)) * r))

        _assert_close_grad(case.id, f"dx ({mode})", dx, _finite_difference(loss, x, 1e-6))
        for name in ("weight", "bias"):
            param = getattr(layer, name, None)
            if param is None:
                continue
            layer.forward(x, training=training)
            layer.backward(r)
            analytic = np.array(getattr(layer, f"grad_{name}"), dtype=np.float64)
            numeric = _finite_difference(loss, param, 1e-6)
            _assert_close_grad(case.id, f"grad_{name} ({mode})", analytic, numeric)


DEFAULT_LAYOUTS: tuple[tuple[tuple[int, ...], int], ...] = (
    ((6, 3), 1),
    ((4, 3, 5), 1),
    ((2, 3, 4, 5), 1),
    ((2, 4, 5, 3), -1),
)
"""``(shape, channel_axis)`` pairs of :func:`check_dtype_and_shape_preserved`."""

SMALL_LAYOUTS: tuple[tuple[tuple[int, ...], int], ...] = (
    ((2, 3), 1),
    ((1, 3, 2), 1),
    ((1, 1, 2, 3), -1),
)
"""Tiny layouts of rank 2, 3 and 4 (channels-last), for slow backends."""


def check_dtype_and_shape_preserved(
    case: NormalizationCase,
    *,
    layouts: Sequence[tuple[tuple[int, ...], int]] | None = None,
) -> None:
    """Output and dx keep the input's dtype and shape, for ranks 2-4 and channels-last.

    Parameters
    ----------
    case : NormalizationCase
        The layer to check.
    layouts : sequence of (shape, channel_axis), optional
        Inputs to check, 3 channels on ``channel_axis``, each in float32 and
        float64, training and eval; those of a rank below ``case.min_rank``
        are left out. :data:`DEFAULT_LAYOUTS` when None.
        :data:`SMALL_LAYOUTS` covers rank 2, rank 3 and channels-last rank 4
        with a few elements each, for slow backends such as the CUDA
        simulator.

    Raises
    ------
    ValueError
        If a layout given has no 3 channels on its axis, or none of those
        given has a rank of ``case.min_rank`` or more.
    """
    rng = np.random.default_rng(3)
    if layouts is None:
        kept = [(shape, axis) for shape, axis in DEFAULT_LAYOUTS if len(shape) >= case.min_rank]
    else:
        kept = [
            (_checked_shape(case, shape, axis, "layouts"), axis)
            for shape, axis in layouts
            if len(shape) >= case.min_rank
        ]
        if not kept:
            raise ValueError(f"layouts: none of rank >= {case.min_rank}, nothing to check")
    for dtype in (np.float32, np.float64):
        for shape, axis in kept:
            x = rng.standard_normal(shape).astype(dtype)
            layer = case.make(3, dtype=dtype, channel_axis=axis)
            for training in (True, False):
                y = np.asarray(layer.forward(x, training=training))
                where = f"{case.id}: {np.dtype(dtype).name} {shape} axis {axis} training={training}"
                assert y.shape == x.shape, f"{where}: output shape {y.shape}"
                assert y.dtype == x.dtype, f"{where}: output dtype {y.dtype}"
                dx = np.asarray(layer.backward(np.ones_like(x)))
                assert dx.shape == x.shape and dx.dtype == x.dtype, (
                    f"{where}: dx is {dx.dtype} {dx.shape}"
                )


def _snapshot(layer: Any) -> dict[str, np.ndarray]:
    state = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    for name in ("grad_weight", "grad_bias"):
        value = getattr(layer, name, None)
        if value is not None:
            state[name] = np.array(value, copy=True)
    return state


def check_rejects_bad_input(case: NormalizationCase) -> None:
    """Bad input raises ValueError/TypeError with a message, and changes nothing.

    One value per channel is bad input for cases with ``batch_statistics``;
    a rank below the case's ``min_rank`` is bad input too.
    """
    rng = np.random.default_rng(5)
    layer = case.make(3, dtype=np.float64)
    good = rng.standard_normal((4, 3, 2))
    layer.forward(good, training=True)
    layer.backward(rng.standard_normal(good.shape))
    bad_inputs = {
        "wrong channel count": rng.standard_normal((4, 2, 2)),
        "rank 1": rng.standard_normal(3),
        "integer dtype": np.ones((4, 3, 2), dtype=np.int64),
        "other float dtype": rng.standard_normal((4, 3, 2)).astype(np.float32),
    }
    if case.batch_statistics:
        bad_inputs["one value per channel in training"] = rng.standard_normal((1, 3))
    if case.min_rank > 2:
        bad_inputs[f"rank below {case.min_rank}"] = rng.standard_normal((4, 3))
    before = _snapshot(layer)
    for what, bad in bad_inputs.items():
        try:
            layer.forward(bad, training=True)
        except (ValueError, TypeError) as exc:
            assert str(exc), f"{case.id}: {what}: {type(exc).__name__} without a message"
        else:
            raise AssertionError(f"{case.id}: forward accepted bad input ({what})")
        after = _snapshot(layer)
        for key, value in before.items():
            assert np.array_equal(value, after[key], equal_nan=True), (
                f"{case.id}: rejected input ({what}) modified {key}"
            )
    layer.forward(good, training=True)
    before = _snapshot(layer)
    try:
        layer.backward(rng.standard_normal((4, 3, 3)))
    except (ValueError, TypeError):
        pass
    else:
        raise AssertionError(f"{case.id}: backward accepted dy of the wrong shape")
    after = _snapshot(layer)
    for key, value in before.items():
        assert np.array_equal(value, after[key]), f"{case.id}: rejected dy modified {key}"


def check_state_dict_round_trip_layer(
    case: NormalizationCase, *, shape: tuple[int, ...] | None = None
) -> None:
    """A layer loaded from ``state_dict()`` computes what the original computes.

    Parameters
    ----------
    case : NormalizationCase
        The layer to check.
    shape : tuple of int, optional
        Shape of the inputs, 3 channels on axis 1, rank at least
        ``case.min_rank``; ``(6, 3, 4)`` when None. A smaller one, such as
        ``(2, 3, 2)``, for slow backends.

    Raises
    ------
    ValueError
        If ``shape`` has no 3 channels on axis 1 or too low a rank.
    """
    shape = (6, 3, 4) if shape is None else _checked_shape(case, shape, 1, "shape")
    rng = np.random.default_rng(11)
    a = case.make(3, dtype=np.float64)
    for _ in range(3):
        a.forward(rng.standard_normal(shape) * 3 + 1, training=True)
    for name in ("weight", "bias"):
        param = getattr(a, name, None)
        if param is not None:
            param[...] = rng.uniform(0.5, 1.5, param.shape)
    b = case.make(3, dtype=np.float64)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    x = rng.standard_normal(shape)
    assert np.array_equal(a.forward(x, training=False), b.forward(x, training=False)), (
        f"{case.id}: eval output differs after load_state_dict"
    )
    assert np.array_equal(a.forward(x, training=True), b.forward(x, training=True)), (
        f"{case.id}: training output differs after load_state_dict"
    )
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), f"{case.id}: state_dict keys differ after a round trip"
    for key in sa:
        assert np.array_equal(sa[key], sb[key]), f"{case.id}: {key} diverged after a training step"


NORMALIZATION_CHECKS: tuple[Callable[[NormalizationCase], None], ...] = (
    check_standardizes,
    check_gradients,
    check_dtype_and_shape_preserved,
    check_rejects_bad_input,
    check_state_dict_round_trip_layer,
)

__all__ = [
    "DEFAULT_LAYOUTS",
    "FAR_STEPS",
    "NORMALIZATION_CHECKS",
    "SCHEDULER_CHECKS",
    "SMALL_LAYOUTS",
    "check_bad_input_changes_nothing",
    "check_bound_optimizer_follows",
    "check_deterministic",
    "check_dtype_and_shape_preserved",
    "check_gradients",
    "check_lr_at_matches_step",
    "check_lr_finite_nonnegative",
    "check_rates_at_far_steps",
    "check_refused_rate_changes_nothing",
    "check_rejects_bad_input",
    "check_standardizes",
    "check_state_dict_round_trip",
    "check_state_dict_round_trip_layer",
    "default_normalization_inputs",
]
