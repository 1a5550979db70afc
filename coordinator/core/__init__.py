"""Layer 1, the bottom: the failure vocabulary, the exception tree, config models and result records.
Imports nothing else of the package."""
