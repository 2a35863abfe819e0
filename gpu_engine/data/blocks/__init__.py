"""The per-block Bitcoin dataset: issuance, supply, stock-to-flow, power-law fair value, price.

`dataset` builds and loads it (`python -m gpu_engine.data blocks`); `sources` reads the daily
chain statistics and price files it is anchored on; `timemap` maps heights to times; `price`
gives each block its price (real where a source has one, modelled and labelled elsewhere).
"""
