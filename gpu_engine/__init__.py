"""GPU parameter-sweep engine for order-book trading strategies.

The public entry is `gpu_engine.sweep(book, bank, configs, device="auto", buckets=16)`
(gpu_engine/sweep.py). Importing the package is light: it imports neither cupy nor numba
and compiles no kernel; `sweep` loads them on first call.
"""
from __future__ import annotations

__version__ = "0.1.0"


def sweep(book, bank, configs, device: str = "auto", buckets: int = 16, batch=None,
          allow_crossed: bool = False, *, contract: str = "linear", multiplier=None,
          tick_size=None, lot_size: float = 0.0, queue: str = "risk_averse",
          queue_n: float = 2.0):
    """Evaluate every configuration on the book and return an xarray Dataset.

    The keyword-only arguments are the run-wide market settings of rules v2 (contract,
    multiplier, tick and lot size, queue model); their defaults give rules v1. See
    gpu_engine.sweep.sweep for the full contract.
    """
    from gpu_engine.sweep import sweep as _sweep

    return _sweep(book, bank, configs, device=device, buckets=buckets, batch=batch,
                  allow_crossed=allow_crossed, contract=contract, multiplier=multiplier,
                  tick_size=tick_size, lot_size=lot_size, queue=queue, queue_n=queue_n)


__all__ = ["sweep", "__version__"]
