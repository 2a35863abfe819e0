"""GPU parameter-sweep engine for order-book trading strategies.

The public entry is `gpu_engine.sweep(book, bank, configs, device="auto", buckets=16)`
(gpu_engine/sweep.py). Importing the package is light: it imports neither cupy nor numba
and compiles no kernel; `sweep` loads them on first call.
"""
from __future__ import annotations

__version__ = "0.1.0"


def sweep(book, bank, configs, device: str = "auto", buckets: int = 16, batch=None,
          allow_crossed: bool = False):
    """Evaluate every configuration on the book and return an xarray Dataset.

    See gpu_engine.sweep.sweep for the full contract.
    """
    from gpu_engine.sweep import sweep as _sweep

    return _sweep(book, bank, configs, device=device, buckets=buckets, batch=batch,
                  allow_crossed=allow_crossed)


__all__ = ["sweep", "__version__"]
