"""Exactly one copy of each trade: what is in the topic, who may write what, and the writer.

See ARCHITECTURE.md for the design and its proof sketch.
"""
