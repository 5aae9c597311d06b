"""trades-platform: every Kraken trade, live and historical, once in a Kafka topic."""

import warnings

# The checks are partitioned like their assets (`AssetCheckSpec(partitions_def=...)`), which
# Dagster 1.13 marks as a preview. The product relies on it knowingly (dagster pinned in
# pyproject.toml, the checks tested per partition), so the warning is not repeated in every
# process's log: 6 lines at each import of the code location (webserver, daemon, each run).
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec")
