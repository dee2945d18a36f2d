"""Keys, signatures, hashing and Merkle commitments: the bottom layer; imports nothing above."""
