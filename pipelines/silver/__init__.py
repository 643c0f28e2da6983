"""Silver: validated, typed, deduplicated events; every bad record in quarantine."""
