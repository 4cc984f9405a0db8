"""Development tools, not part of the installed package: the demo, a verifying webhook receiver,
worker processes for tests and benchmarks, and a local Triton server on the CPU."""
