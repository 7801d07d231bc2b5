"""Process and run-time plumbing: offline environment, ranks, run directories, waits."""
