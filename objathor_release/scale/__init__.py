"""A sharded release past one machine: one shard per job (a CI matrix, Ray tasks), then one finish."""
