"""Data sources, shards, the typed batch and LightningDataModules."""
