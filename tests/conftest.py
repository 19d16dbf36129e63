"""Test-wide setup: 8 simulated CPU devices (for sharding tests) and float64 off by default.

XLA_FLAGS must be set before jax is imported anywhere, hence here, at collection time.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
