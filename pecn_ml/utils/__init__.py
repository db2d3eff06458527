"""Small shared helpers: progress logging, atomic writes, hashing."""
