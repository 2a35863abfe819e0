"""Level-2 order books: the book store, the feed readers, the importers and the live recorder.

`store` owns the on-disk book store (zarr, its schema and writer); `feeds` holds one reader per
venue or file format, each yielding canonical book and trade rows; `importers` turns files into
stores (`python -m gpu_engine.data import`); `record` captures live WebSocket feeds
(`python -m gpu_engine.data record`).
"""
