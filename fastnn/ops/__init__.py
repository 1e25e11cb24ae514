"""The kernel door: validated entry points to fastnn's numerical kernels.

Every function here checks its arguments (shape, dtype agreement, contiguity,
writability of outputs and state, label range, finite and in-range scalars),
allocates the outputs the caller did not pass, and then calls exactly one
kernel of the active backend:

* ``"cython"``: ``fastnn._kernels``, compiled, typed memoryviews, no bounds
  checks (so nothing may reach it unvalidated);
* ``"numpy"``: ``fastnn._numpy_kernels``, the readable reference.

The package has four parts:

* :mod:`fastnn.ops.backends`: the backend door, the only importer of a backend;
  :func:`set_backend` or, for a block of code, the :func:`backend` context manager
  (process-wide, not per thread);
* :mod:`fastnn.ops.arrays`: the array checks every entry point runs first;
* :mod:`fastnn.ops.calls`: the per-call kernels (validated on every call);
* :mod:`fastnn.ops.bound`: bound ops for planned steps (validated once, run many times).
"""

from __future__ import annotations

from .backends import (
    FastnnBuildWarning,
    available_backends,
    backend,
    backend_info,
    cython_status,
    get_backend,
    set_backend,
)
from .bound import (
    PACKED_MIN_M,
    PACKED_MIN_N,
    SMALL_GEMM_MAX,
    bind_adam,
    can_plan,
    fuse_epilogues,
    plan_activation,
    plan_batchnorm_backward,
    plan_batchnorm_eval,
    plan_batchnorm_train,
    plan_column_sum,
    plan_finite,
    plan_gather,
    plan_matmul,
    plan_softmax,
    plan_softmax_cross_entropy,
    plan_standardize,
    program,
    rebind_matmul_input,
    uses_packed_gemm,
)
from .calls import (
    BatchNormCache,
    adam_update,
    batchnorm_backward,
    batchnorm_forward,
    rmsprop_update,
    sgd_update,
    softmax,
    softmax_cross_entropy,
)

__all__ = [
    "PACKED_MIN_M",
    "PACKED_MIN_N",
    "SMALL_GEMM_MAX",
    "BatchNormCache",
    "FastnnBuildWarning",
    "adam_update",
    "available_backends",
    "backend",
    "backend_info",
    "fuse_epilogues",
    "batchnorm_backward",
    "batchnorm_forward",
    "bind_adam",
    "can_plan",
    "cython_status",
    "get_backend",
    "plan_activation",
    "plan_batchnorm_backward",
    "plan_batchnorm_eval",
    "plan_batchnorm_train",
    "plan_column_sum",
    "plan_finite",
    "plan_gather",
    "plan_matmul",
    "plan_softmax",
    "plan_softmax_cross_entropy",
    "plan_standardize",
    "program",
    "rebind_matmul_input",
    "uses_packed_gemm",
    "rmsprop_update",
    "set_backend",
    "sgd_update",
    "softmax",
    "softmax_cross_entropy",
]
