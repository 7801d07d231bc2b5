"""Process and run-time plumbing without Lightning: offline environment and W&B
credentials, ranks, run directories, waits; the sweep agent and offline sweep engine."""
