"""Evaluation: trace replay (simulated or live), metrics, sweeps, reports and plots."""
