"""comfyfleet benchmarks (not installed): `make bench` or `.venv/bin/python -m bench.run`."""
