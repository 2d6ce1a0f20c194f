"""A local ModelProxy service: both planes, the lifecycle, policies and fault injection."""
