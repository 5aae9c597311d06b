"""Historical backfill: Kraken REST trades -> the trades topic, one UTC day x pair per partition."""
