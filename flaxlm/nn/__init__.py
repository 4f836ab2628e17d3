"""The building blocks every model is made of: the one projection layer, attention kernels,
transformer layers, logical-axis sharding rules and losses. Nothing here knows a family, a
task or a run."""
