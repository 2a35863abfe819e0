"""Synthetic order flow, the embedded default data set.

`generate` is the command (`python -m gpu_engine.data synth`) and the store writer; `params`
holds the generator's parameters, `layout` its state indices, `engine` and `book` the numba
event loop and order book, `stats` the stylised facts it is calibrated against.
"""
