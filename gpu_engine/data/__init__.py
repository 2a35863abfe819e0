"""Everything that produces canonical market data: blocks, book stores, feeds, importers, synth.

This package imports nothing of the engine (ARCHITECTURE section 2).
"""
