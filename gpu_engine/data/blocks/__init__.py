"""The per-block Bitcoin dataset: issuance, supply, stock-to-flow, power-law fair value, price,
real block headers.

`dataset` builds and loads it (`python -m gpu_engine.data blocks`); `sources` reads the daily
chain statistics and price files it is anchored on; `timemap` maps heights to times; `price`
gives each block its price (real where a source has one, modelled and labelled elsewhere).
Real headers (`blocks --source`): `rpc` (Bitcoin Core JSON-RPC) and `esplora` (Esplora HTTP
API) fetch them, `remote` holds what both share (credentials, retries, errors), `fetch`
drives the fetch (resume, reorg repair, --follow), `headers` owns the fetched-header table
and what the dataset takes from it; `fakes` are loopback fakes of both sources for tests.
"""
