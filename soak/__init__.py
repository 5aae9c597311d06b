"""`make soak`: a long live run with a connection fault every 30 s (see __main__.py)."""
