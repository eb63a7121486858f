"""Built-in plugin: ``piecewise_constant``, as ``optax.piecewise_constant_schedule``."""

from __future__ import annotations

from collections.abc import Mapping

from bnsgd_numba.hookspecs import Register, hookimpl
from bnsgd_numba.schedulers._checks import check_integer, check_rate, check_step, finite_rate
from bnsgd_numba.schedulers.base import Scheduler, resolve_alias


class PiecewiseConstant(Scheduler):
    """Multiply the learning rate by ``scale`` from each ``boundary`` step on.

    Parameters
    ----------
    init_value : float, optional
        Learning rate at step 0; ``base_lr`` is another name for it (give
        one of the two, or neither: then the bound optimizer's rate).
    boundaries_and_scales : mapping of int to float, optional
        ``{boundary: scale}``; from step ``boundary`` on the learning rate
        is multiplied by ``scale`` (finite, >= 0). None or empty: constant.
    base_lr : float, optional
        Same as ``init_value``.

    Notes
    -----
    Scales compound, in increasing order of boundary, as in Optax. A step
    where the compounded rate overflows a float raises ``ValueError``.
    """

    def __init__(
        self,
        *,
        init_value: float | None = None,
        boundaries_and_scales: Mapping[int, float] | None = None,
        base_lr: float | None = None,
    ) -> None:
        init = resolve_alias(base_lr, "init_value", init_value)
        given = {} if boundaries_and_scales is None else boundaries_and_scales
        if not isinstance(given, Mapping):
            raise TypeError(
                "boundaries_and_scales must be a dict {step: scale}, got "
                f"{type(given).__name__} {given!r}"
            )
        pairs = sorted(
            (
                check_integer(b, "boundaries_and_scales key", minimum=-(2**63)),
                check_rate(s, f"boundaries_and_scales[{b!r}]"),
            )
            for b, s in given.items()
        )
        self.boundaries_and_scales = dict(pairs)
        super().__init__(base_lr=init)

    def lr_at(self, step: int) -> float:
        step = check_step(step)
        value = self.base_lr
        for boundary, scale in self.boundaries_and_scales.items():
            if step >= boundary:
                value *= scale
        return finite_rate(value, f"PiecewiseConstant at step {step}")


@hookimpl
def bnsgd_register_schedulers(register: Register) -> None:
    """Register ``piecewise_constant``."""
    register(
        "piecewise_constant",
        PiecewiseConstant,
        examples=[{"boundaries_and_scales": {50: 0.5, 150: 0.1}}, {}],
    )
