"""Downstream of the topic: a Parquet file per UTC day x pair, and its 1-minute candles."""
