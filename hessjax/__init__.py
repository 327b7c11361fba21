"""hessjax: the curvature of neural-network losses in JAX.

Curvature-vector products (``hvp``, ``hvp_fn``, ``dataset_hvp_fn``, ``ggn_fn``) and estimators that see
an operator only through a matvec: traces with error bars and confidence intervals (``trace``,
``trace_until``), diagonals and per-block traces, Lanczos eigenpairs and spectral densities, the
Fisher-sampling trace, ``hessian_summary`` for all of them over a dataset, and flatness measures
invariant to rescalings that leave the function unchanged.
"""

from hessjax import memory, sharding
from hessjax._checks import NonFiniteError
from hessjax.fisher import fisher_trace
from hessjax.flatness import (
    Operator,
    adaptive_operator,
    adaptive_scale,
    adaptive_sharpness,
    effective_rank,
    relative_flatness,
    relative_flatness_operator,
    scaled_operator,
)
from hessjax.products import dataset_hvp_fn, ggn_fn, hvp, hvp_fn
from hessjax.spectrum import (
    Eigen,
    LanczosResult,
    SpectralDensity,
    lanczos,
    spectral_density,
    top_eigenvalues,
)
from hessjax.summary import HessianSummary, hessian_summary
from hessjax.trace import (
    DiagonalEstimate,
    TraceEstimate,
    block_traces,
    diagonal,
    trace,
    trace_until,
)

__version__ = "0.1.0"

__all__ = [
    "DiagonalEstimate",
    "Eigen",
    "HessianSummary",
    "LanczosResult",
    "NonFiniteError",
    "Operator",
    "SpectralDensity",
    "TraceEstimate",
    "adaptive_operator",
    "adaptive_scale",
    "adaptive_sharpness",
    "block_traces",
    "dataset_hvp_fn",
    "diagonal",
    "effective_rank",
    "fisher_trace",
    "ggn_fn",
    "hessian_summary",
    "hvp",
    "hvp_fn",
    "lanczos",
    "memory",
    "relative_flatness",
    "relative_flatness_operator",
    "scaled_operator",
    "spectral_density",
    "sharding",
    "top_eigenvalues",
    "trace",
    "trace_until",
]
