"""What leaders and shards say to each other: the wire header and ops, payload codecs, the key-list cache,
vector clocks and the SSP rule, and the numerical checks every message gets."""
