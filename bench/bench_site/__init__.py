"""A minimal Django site for the runworker contestants of bench/flowjobs_bench.py."""
