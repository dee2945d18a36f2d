"""Keys, signatures, hashing and Merkle commitments: the bottom layer, importing nothing above it."""
