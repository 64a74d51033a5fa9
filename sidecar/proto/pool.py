"""The private descriptor pool our generated stubs register in (see build.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
