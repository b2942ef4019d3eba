"""Data-plane benchmark of the lab: the runner ``dataplane``, one module per measurement."""
