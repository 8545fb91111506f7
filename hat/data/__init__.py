"""Embedded demo corpus (De-En, En-Fr) and its preparation for fairseq."""
