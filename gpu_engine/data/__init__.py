"""Everything that produces canonical market data: blocks, book stores, feeds, importers, synth.

This package imports nothing of the engine (kernels, sweep, backend): only numpy, zarr, numba
(synth) and the shared `gpu_engine.errors` / `gpu_engine.outputs`, so data tools run without a GPU.
"""
