"""The user-facing jobs (thin: parse args, call gpu_engine, report).

    python -m sweeps.optimize   Optuna batch search on the embedded default (or your data)
    python -m sweeps.grid       every point of a space into a Zarr cube, resumable
    python -m sweeps.inspect    top configurations in and out of sample, PBO, DSR, verdict, heatmaps

Parameter spaces live in sweeps/spaces/*.toml (syntax: gpu_engine/space.py).
"""
