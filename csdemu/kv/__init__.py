"""The KV-cache side of the drive: layout, engine, timing."""
