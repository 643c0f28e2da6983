"""I/O at the edges: Kafka and Delta readers, writers and checkpoints."""
