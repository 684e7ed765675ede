"""The types every layer shares (the domain vocabulary) and the XNYS calendar."""
