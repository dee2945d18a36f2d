"""Block authorship (Aura), finality, fork choice: narrow engines over authority snapshots."""
