"""Engine tests use the suite-wide fixtures of tests/conftest.py (make_queue, make_worker,
flow_producer, queue) and never import Django."""
