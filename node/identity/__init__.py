"""Identity of members: the data space's authority (CA), member keys and certificates."""
