"""The decision core: every decision the stores make, standard library only.

Freshness and windows, policy, status, the token-endpoint exchange and its answers, kept
grants, the clock's offset, the row parser and what is written back, and the flows that
put them in order (the locked refresh included). Nothing here does I/O or reads a clock
of its own; the shells in `_io` perform the effects the flows yield (see `effects`).
import-linter keeps it so: `_core` imports no third-party package and nothing of ours
outside `_core`.
"""
