"""Tooling around the library, never imported by it: the CLI's probe, demo and benchmarks,
report plotting and the network-namespace rig used by benchmarks and tests."""
