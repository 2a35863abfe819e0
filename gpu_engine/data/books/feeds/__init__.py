"""One reader per venue or file format (Binance, Coinbase, OKX, LOBSTER, Tardis, JSON lines),
each yielding the canonical `events.BookRow` / `events.TradeRow`; `sniff` detects the format."""
