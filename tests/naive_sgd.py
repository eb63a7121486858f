"""Slow, obviously correct float64 references for the SGD family.

Every function computes in float64 from the given values and returns new
arrays; nothing is modified in place.
"""

from __future__ import annotations

import math

import numpy as np


def naive_sgd_step(
    param,
    grad,
    buf,
    *,
    lr,
    momentum=0.0,
    dampening=0.0,
    nesterov=False,
    weight_decay=0.0,
    decoupled_weight_decay=False,
    maximize=False,
):
    """One step of torch.optim.SGD (for-loop semantics) plus SGDW; returns (param, buf).

    ``buf`` is None before the first momentum step; the returned buffer is
    None when ``momentum == 0``.
    """
    p = np.asarray(param, dtype=np.float64).copy()
    g = np.asarray(grad, dtype=np.float64).copy()
    if maximize:
        g = -g
    if weight_decay != 0 and not decoupled_weight_decay:
        g = g + weight_decay * p
    new_buf = None
    if momentum != 0:
        if buf is None:
            new_buf = g.copy()
        else:
            new_buf = momentum * np.asarray(buf, dtype=np.float64) + (1 - dampening) * g
        g = g + momentum * new_buf if nesterov else new_buf
    if decoupled_weight_decay:
        p = p * (1 - lr * weight_decay)
    p = p - lr * g
    return p, new_buf


def naive_sgd_error_scale(
    param,
    grad,
    buf,
    *,
    lr,
    momentum=0.0,
    dampening=0.0,
    nesterov=False,
    weight_decay=0.0,
    decoupled_weight_decay=False,
    maximize=False,
):
    """The step computed on absolute values: (param scale, buffer scale).

    A step computed in a floating-point type of unit roundoff ``u`` with a
    handful of operations per element is within ``k * u`` of this scale of
    the exact result (the standard bound for sums and products).
    """
    del maximize
    p = np.abs(np.asarray(param, dtype=np.float64))
    g = np.abs(np.asarray(grad, dtype=np.float64))
    if weight_decay != 0 and not decoupled_weight_decay:
        g = g + weight_decay * p
    b = None
    if momentum != 0:
        b = g.copy() if buf is None else momentum * np.abs(buf) + abs(1 - dampening) * g
        g = g + momentum * b if nesterov else b
    if decoupled_weight_decay:
        p = p * abs(1 - lr * weight_decay)
    return p + lr * g, b


def naive_total_norm(grads, norm_type=2.0):
    """Total norm of a list of arrays, exactly summed in float64 (``math.fsum``)."""
    values = [np.asarray(g, dtype=np.float64).ravel() for g in grads if g is not None]
    values = np.concatenate(values) if values else np.zeros(0)
    if values.size == 0:
        return 0.0
    if np.isnan(values).any():
        return math.nan
    if math.isinf(norm_type):
        return float(np.abs(values).max())
    total = math.fsum((np.abs(values) ** norm_type).tolist())
    return total ** (1.0 / norm_type)


def option_sets(*, decoupled=True):
    """Every valid combination of SGD's options, as keyword dicts (without lr).

    momentum in {0, 0.9}, dampening in {0, 0.3}, nesterov, weight_decay in
    {0, 0.05}, decoupled weight decay (when ``decoupled``), maximize.
    """
    combos = []
    for momentum in (0.0, 0.9):
        for dampening in (0.0, 0.3):
            for nesterov in (False, True):
                if nesterov and (momentum == 0 or dampening != 0):
                    continue
                for weight_decay in (0.0, 0.05):
                    for decoupled_weight_decay in (False, True) if decoupled else (False,):
                        for maximize in (False, True):
                            combos.append(
                                dict(
                                    momentum=momentum,
                                    dampening=dampening,
                                    nesterov=nesterov,
                                    weight_decay=weight_decay,
                                    decoupled_weight_decay=decoupled_weight_decay,
                                    maximize=maximize,
                                )
                            )
    return combos


def option_id(options):
    """A short readable test id for an option dict."""
    parts = [f"mom{options['momentum']}", f"damp{options['dampening']}"]
    if options["nesterov"]:
        parts.append("nesterov")
    parts.append(f"wd{options['weight_decay']}")
    if options["decoupled_weight_decay"]:
        parts.append("decoupled")
    if options["maximize"]:
        parts.append("max")
    return "-".join(parts)
