"""`make bench`: what the framework, the adversary, the loader and the audit cost
(`measure`), against a plain PyTorch loop (`plain`). Imported by the `bench` entry point
only."""
