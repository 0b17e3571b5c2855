"""Transports that carry Raft messages between nodes: ``memory`` (in one process, seeded
faults) today; a TCP transport for one process per node is the next step."""
