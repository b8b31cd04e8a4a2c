"""The local side: eligibility, scanning, hashing, the volume marker, metadata."""
