"""The alias search: token sequences that make SAM3 segment a concept, and what it needs."""
