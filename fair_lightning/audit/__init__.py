"""The leakage audit without Lightning: attackers, probes, output fairness, the proxy
audit, run reports and plots."""
