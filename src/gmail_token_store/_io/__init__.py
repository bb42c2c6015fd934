"""The I/O shells: perform the core's effects with psycopg and httpx, sync and async.

The two shells and their pools (with the bookkeeping they share), every SQL statement,
the mapping of driver errors, single flight and the fork hooks. A shell decides nothing
about tokens; import-linter keeps `_io` from importing the stores or the command.
"""
