"""The recording skeleton every profile kind shares: targets, signals, `-- CMD`, the
record loop and its windows, exec following, symbol snapshots, outputs and the summary."""
