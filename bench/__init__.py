"""Side-by-side benchmark of the trade path: `make bench` or `python -m bench`.

Everything runs on this machine in one process tree: a local broker, a replay server pushing
pre-serialized Kraken v2 frames (and serving REST pages), the Kraken simulator for the paced REST
run, and one worker subprocess per measured run.
"""
