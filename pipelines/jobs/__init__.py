"""spark-submit entry points. Each job takes its run id / data interval as arguments and owns its output."""
