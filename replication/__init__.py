"""stratakv's replication layer (N = 3, 5 or 7 copies agreeing through a consensus log)."""
