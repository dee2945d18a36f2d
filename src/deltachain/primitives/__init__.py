"""Wire objects (headers, blocks, transactions), typed ids and the chain spec."""
