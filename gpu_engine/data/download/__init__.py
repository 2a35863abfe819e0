"""`python -m gpu_engine.data download`: public history (Tardis datasets, the Binance archive) to disk.

* `http.py`: the retrying, resuming HTTP client and the file checks (whole gzip stream, sha256);
* `tardis.py`: Tardis.dev downloadable CSV datasets (URLs, API key, file layout);
* `binance_archive.py`: data.binance.vision daily files with their `.CHECKSUM`;
* `command.py`: the command line, the summary and the optional import into one store per day.
"""
