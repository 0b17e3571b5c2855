"""stratakv's benchmarks and crash-recovery torture tool (``python -m bench``)."""
