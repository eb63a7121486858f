"""Streaming (non-temporal) stores, for outputs too large for the cache.

A plain store to a line that is not in the cache first reads the line from
memory (a read for ownership), so a pass writing an output much larger than
the cache moves it through memory twice. A streaming store writes whole
lines without reading them or keeping them: one transfer instead of two.
Smaller outputs are better left in the cache for whatever reads them next,
so the passes stream only outputs of :data:`STREAM_BYTES` or more.

The normalization's formulas exist here as intrinsics that compute one
vector of results and store it with a streaming store
(:func:`normalize_vector` for BatchNorm, :func:`centered_normalize_vector`
for GroupNorm, :func:`input_gradient_vector` for BatchNorm's dx). They emit
the same operations, with the same fastmath flags, as the kernels' loops, so
every element gets the same bits either way (the tests check it). A pass streams each contiguous span of its output
(:func:`normalize_span`, :func:`centered_normalize_span`,
:func:`input_gradient_span`): plain stores up
to the span's first cache-line boundary and after its last one, streaming
stores for the whole lines between (:func:`line_span`); a line written both
ways would cost a round trip to memory. Each task ends with
:func:`store_fence`.

Nothing between the streaming stores of a task may be an atomic operation:
on x86-64 one waits for every streaming store before it to reach memory.
numba's reference counting is atomic (a kernel called with an array takes a
reference to it, and so does a slice), so the loops that stream work on
:func:`borrow`-ed arrays, which carry no reference count.

Measured on 2 cores (AMD EPYC, Zen 3), each pass against the same code with
plain stores, in interleaved rounds in one process
(``benchmarks/bench_kernel_ab.py``), bit for bit the same output: the
normalization of (256, 64, 32, 32) float32 (67 MB) 1.26-1.33x faster in
eval and 1.14-1.23x in training, channels-last 1.22x in eval, (8, 256, 56,
56) (26 MB) 1.22-1.39x and 1.13-1.14x. The GroupNorm forward of (32, 64,
56, 56), 8 groups, went from 3.1-3.2 ms to 2.5-2.8 ms in the benchmark, run
to run. BatchNorm's input gradient gained nothing measurable there
(0.91-1.16x, as noisy as the same code against itself). On a later machine
(AMD EPYC, Zen 4: AVX-512, 1 MB L2 per core) its NCS pass alone, streamed
against plain, writing the same ``dx``, in 30 paired rounds (median and
quartiles): (256, 64, 1024) 1.05-1.06x (0.90-1.18), (8, 256, 3136) 1.13x
(1.08-1.27); that pass streams. The RC pass does not: (262144, 64)
0.95-0.97x, (8200, 1024) 0.92-0.97x.
"""

from __future__ import annotations

import platform

from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic

from bnsgd_numba import config
from bnsgd_numba._core.compile import cpu_kernel

STREAM_BYTES = 24 * 2**20
"""Bytes of output from which a pass writes it with streaming stores.

Three quarters of this machine's 32 MB last-level cache (glibc's memcpy uses
the same fraction for its own streaming stores): a (1024, 4096) float32
output, 16 MiB, was written 1.45x faster streamed in one run and 0.88x in
another, where it and its input had stayed in the cache between calls.
"""

VECTOR_BYTES = 32
"""Bytes of one streaming store: an AVX register (two SSE stores without AVX)."""

LINE_BYTES = 64
"""Bytes of a cache line."""

_X86_64 = platform.machine().lower() in ("x86_64", "amd64")
_FLAGS = tuple(sorted(config.FASTMATH))


@intrinsic
def store_fence(typingctx):
    """Order a task's streaming stores before its later stores (``sfence`` on x86-64)."""

    def codegen(context, builder, signature, args):
        if _X86_64:
            fence = builder.module.declare_intrinsic(
                "llvm.x86.sse.sfence", fnty=ir.FunctionType(ir.VoidType(), [])
            )
            builder.call(fence, [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def address(typingctx, array, index):
    """The address of ``array[index]`` (a 1-D array) as an integer, taking no reference."""
    if not (isinstance(array, types.Array) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        pointer = builder.gep(data, [args[1]])
        return builder.ptrtoint(pointer, context.get_value_type(types.intp))

    return types.intp(array, index), codegen


@intrinsic
def borrow(typingctx, array):
    """``array`` without its reference count: passing or slicing it takes no reference.

    For the loops that stream (see the module docstring), over arrays their
    caller keeps alive; never return it or keep it past that caller.
    """
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, args[0])
        view.meminfo = ir.Constant(view.meminfo.type, None)
        view.parent = ir.Constant(view.parent.type, None)
        return view._getvalue()

    return array(array), codegen


@cpu_kernel()
def keep_alive(array):
    """Nothing: a use of ``array`` that keeps it alive up to the call.

    numba frees an array after its last use; views of it made with
    :func:`borrow` do not count, so a kernel that borrows from an array it
    allocated calls this after its last use of the views.
    """
    return None


@intrinsic
def lanes(typingctx, array):
    """Values of ``array``'s dtype in one streaming store, as a compile-time constant."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        itemsize = context.get_abi_sizeof(context.get_value_type(signature.args[0].dtype))
        return context.get_constant(types.intp, VECTOR_BYTES // itemsize)

    return types.intp(array), codegen


@cpu_kernel()
def streams(output):
    """Whether a pass writes ``output`` with streaming stores (:data:`STREAM_BYTES`)."""
    return output.size * output.itemsize >= STREAM_BYTES


@cpu_kernel()
def line_span(first, count, itemsize):
    """``(head, body)`` of a span of ``count`` values whose first value is at address ``first``.

    Values ``head`` to ``body`` cover whole cache lines: they are streamed;
    the ``head`` values before them and those from ``body`` on are stored
    plainly. A span not aligned to its itemsize is stored plainly throughout.
    """
    if first % itemsize != 0:
        return count, count
    head = min(count, ((LINE_BYTES - first % LINE_BYTES) % LINE_BYTES) // itemsize)
    per_line = LINE_BYTES // itemsize
    return head, head + (count - head) // per_line * per_line


def _vector_type(context, array_type):
    element = context.get_value_type(array_type.dtype)
    return ir.VectorType(element, VECTOR_BYTES // context.get_abi_sizeof(element))


def _operand(context, builder, vector, value_type, value, index):
    # a constant of a formula: the vector of ``value`` at ``index`` when it is
    # an array, else ``value`` in every lane
    if isinstance(value_type, types.Array):
        data = context.make_array(value_type)(context, builder, value).data
        pointer = builder.bitcast(builder.gep(data, [index]), vector.as_pointer())
        return builder.load(pointer, align=context.get_abi_sizeof(vector.element))
    splat = ir.Constant(vector, ir.Undefined)
    for lane in range(vector.count):
        splat = builder.insert_element(splat, value, ir.IntType(32)(lane))
    return splat


def _store_streaming(context, builder, vector, array_type, array, index, value):
    data = context.make_array(array_type)(context, builder, array).data
    pointer = builder.bitcast(builder.gep(data, [index]), vector.as_pointer())
    store = builder.store(value, pointer, align=VECTOR_BYTES)
    store.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))


def _constants_fit(dtype, constants):
    return all(
        (isinstance(c, types.Array) and c.dtype == dtype and c.ndim == 1) or c == dtype
        for c in constants
    )


def _normalize_codegen(centers):
    # codegen of y = ((x - centers[0]) - centers[1] ...) * scale + offset for
    # one vector, the operations and flags of the kernels' loops, streamed
    def codegen(context, builder, signature, args):
        x_type, y_type = signature.args[0], signature.args[1]
        vector = _vector_type(context, x_type)
        index, column = args[2], args[3]
        constants = [
            _operand(context, builder, vector, signature.args[k], args[k], column)
            for k in range(4, 4 + centers + 2)
        ]
        result = _operand(context, builder, vector, x_type, args[0], index)
        for center in constants[:centers]:
            result = builder.fsub(result, center, flags=_FLAGS)
        result = builder.fadd(
            builder.fmul(result, constants[centers], flags=_FLAGS),
            constants[centers + 1],
            flags=_FLAGS,
        )
        _store_streaming(context, builder, vector, y_type, args[1], index, result)
        return context.get_dummy_value()

    return codegen


def _normalize_types_fit(x, y, constants):
    return (
        isinstance(x, types.Array)
        and isinstance(y, types.Array)
        and x.dtype == y.dtype
        and isinstance(x.dtype, types.Float)
        and _constants_fit(x.dtype, constants)
    )


@intrinsic
def normalize_vector(typingctx, x, y, index, column, shift, scale, offset):
    """``y[i] = (x[i] - shift) * scale + offset`` for one vector of i from ``index``, streamed.

    ``shift``, ``scale`` and ``offset`` are scalars, or 1-D arrays read from
    ``column``. ``y[index]`` must be aligned to VECTOR_BYTES (:func:`line_span`).
    """
    if not _normalize_types_fit(x, y, (shift, scale, offset)):
        return None
    return types.void(x, y, index, column, shift, scale, offset), _normalize_codegen(1)


@intrinsic
def centered_normalize_vector(typingctx, x, y, index, column, hi, lo, scale, offset):
    """``y[i] = ((x[i] - hi) - lo) * scale + offset`` for one vector, streamed.

    The normalization about a float64 mean split into its value in the
    data's dtype (``hi``) and the rest (``lo``), as the per-sample
    normalizations compute it; otherwise as :func:`normalize_vector`.
    """
    if not _normalize_types_fit(x, y, (hi, lo, scale, offset)):
        return None
    return types.void(x, y, index, column, hi, lo, scale, offset), _normalize_codegen(2)


def _input_gradient_codegen(context, builder, signature, args):
    # codegen of dx = ((dy - shift) - ((x - hi) - lo) * xmu_scale) * dy_scale
    # for one vector, the operations and flags of the kernels' loops, streamed
    dy_type, dx_type = signature.args[0], signature.args[2]
    vector = _vector_type(context, dy_type)
    index, column = args[3], args[4]
    hi, lo, shift, xmu_scale, dy_scale = (
        _operand(context, builder, vector, signature.args[k], args[k], column) for k in range(5, 10)
    )
    gradient = _operand(context, builder, vector, dy_type, args[0], index)
    value = _operand(context, builder, vector, signature.args[1], args[1], index)
    deviation = builder.fsub(builder.fsub(value, hi, flags=_FLAGS), lo, flags=_FLAGS)
    result = builder.fsub(
        builder.fsub(gradient, shift, flags=_FLAGS),
        builder.fmul(deviation, xmu_scale, flags=_FLAGS),
        flags=_FLAGS,
    )
    result = builder.fmul(result, dy_scale, flags=_FLAGS)
    _store_streaming(context, builder, vector, dx_type, args[2], index, result)
    return context.get_dummy_value()


@intrinsic
def input_gradient_vector(
    typingctx, dy, x, dx, index, column, hi, lo, shift, xmu_scale, dy_scale
):  # fmt: skip
    """BatchNorm's input gradient for one vector of i from ``index``, streamed.

    ``dx[i] = ((dy[i] - shift) - ((x[i] - hi) - lo) * xmu_scale) * dy_scale``;
    the constants are scalars, or 1-D arrays read from ``column``.
    ``dx[index]`` must be aligned to VECTOR_BYTES (:func:`line_span`).
    """
    constants = (hi, lo, shift, xmu_scale, dy_scale)
    if not (_normalize_types_fit(x, dx, constants) and dy == x):
        return None
    signature = types.void(dy, x, dx, index, column, hi, lo, shift, xmu_scale, dy_scale)
    return signature, _input_gradient_codegen


@intrinsic
def constant_at(typingctx, value, index):
    """``value[index]`` for a 1-D array, ``value`` itself for a scalar, taking no reference."""
    if isinstance(value, types.Array):

        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            return builder.load(builder.gep(data, [args[1]]))

        return value.dtype(value, index), codegen
    if isinstance(value, types.Float):
        return value(value, index), lambda context, builder, signature, args: args[0]
    return None


@cpu_kernel()
def normalize_span(x, y, start, count, center, a, b):
    """``y[k] = (x[k] - center) * a + b`` for ``count`` values from ``start``, streamed.

    ``x`` and ``y`` are flat :func:`borrow`-ed arrays; each constant is a
    scalar, or an array read at ``k - start``. The span's whole cache lines
    are written with streaming stores, its ends with plain ones.
    """
    head, body = line_span(address(y, start), count, y.itemsize)
    for k in range(start, start + head):
        j = k - start
        y[k] = (x[k] - constant_at(center, j)) * constant_at(a, j) + constant_at(b, j)
    for k in range(start + head, start + body, lanes(y)):
        normalize_vector(x, y, k, k - start, center, a, b)
    for k in range(start + body, start + count):
        j = k - start
        y[k] = (x[k] - constant_at(center, j)) * constant_at(a, j) + constant_at(b, j)


@cpu_kernel()
def centered_normalize_span(x, y, start, count, hi, lo, scale, offset):
    """``y[k] = ((x[k] - hi) - lo) * scale + offset`` over a span, streamed.

    As :func:`normalize_span`, with scalar constants.
    """
    head, body = line_span(address(y, start), count, y.itemsize)
    for k in range(start, start + head):
        y[k] = ((x[k] - hi) - lo) * scale + offset
    for k in range(start + head, start + body, lanes(y)):
        centered_normalize_vector(x, y, k, 0, hi, lo, scale, offset)
    for k in range(start + body, start + count):
        y[k] = ((x[k] - hi) - lo) * scale + offset


@cpu_kernel()
def input_gradient_span(dy, x, dx, start, count, hi, lo, shift, xmu_scale, dy_scale):
    """BatchNorm's input gradient for ``count`` values from ``start``, streamed.

    ``dx[k] = ((dy[k] - shift) - ((x[k] - hi) - lo) * xmu_scale) * dy_scale``
    on flat :func:`borrow`-ed arrays; each constant is a scalar, or an array
    read at ``k - start``. Whole cache lines are streamed, the ends stored
    plainly, as in :func:`normalize_span`.
    """
    head, body = line_span(address(dx, start), count, dx.itemsize)
    for k in range(start, start + head):
        j = k - start
        deviation = (x[k] - constant_at(hi, j)) - constant_at(lo, j)
        dx[k] = (
            (dy[k] - constant_at(shift, j)) - deviation * constant_at(xmu_scale, j)
        ) * constant_at(dy_scale, j)
    for k in range(start + head, start + body, lanes(dx)):
        input_gradient_vector(dy, x, dx, k, k - start, hi, lo, shift, xmu_scale, dy_scale)
    for k in range(start + body, start + count):
        j = k - start
        deviation = (x[k] - constant_at(hi, j)) - constant_at(lo, j)
        dx[k] = (
            (dy[k] - constant_at(shift, j)) - deviation * constant_at(xmu_scale, j)
        ) * constant_at(dy_scale, j)
