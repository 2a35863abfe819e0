"""The live recorder behind `python -m gpu_engine.data record`: one loop, one small adapter per venue.

* `loop.py`: the venue-independent part (`Recorder`, `RecordConfig`, reconnects with backoff,
  signals, flushing, status line, raw capture, `LiveReader` that runs the importer's own
  reader on live lines) and the `Adapter` interface;
* one module per venue (`binance.py`, `coinbase.py`, `bybit.py`): URL, subscription,
  snapshot fetch if any, frame routing, what a gap means and how it is resynced.

`ADAPTERS` maps each `--exchange` name to its adapter class. The command line itself lives
in `gpu_engine.data.books.record`.
"""
from __future__ import annotations

from gpu_engine.data.books.recorder.binance import BinanceAdapter, BinanceUsdmAdapter
from gpu_engine.data.books.recorder.bybit import BybitAdapter, BybitSpotAdapter
from gpu_engine.data.books.recorder.coinbase import CoinbaseAdapter
from gpu_engine.data.books.recorder.loop import (Adapter, Backoff, LiveReader, RawCapture, RecordConfig, Recorder,
                                                 RecordStats, parse_duration)

ADAPTERS: dict[str, type[Adapter]] = {
    "binance": BinanceAdapter,
    "binance-usdm": BinanceUsdmAdapter,
    "coinbase": CoinbaseAdapter,
    "bybit": BybitAdapter,            # v5 linear (USDT/USDC perpetuals)
    "bybit-spot": BybitSpotAdapter,   # v5 spot
}

__all__ = ["ADAPTERS", "Adapter", "Backoff", "LiveReader", "RawCapture", "RecordConfig", "Recorder", "RecordStats",
           "parse_duration"]
