"""The device side: stores a Python device keeps its data in, and the supervisor that keeps it syncing.

``memory`` (in-memory adapters, for tests and embedded peers), ``sqlite`` (a
device store on the stdlib ``sqlite3``, blobs in a folder) and ``supervisor``
(rounds, backoff, pause and resume). Pure Python, like the core.
"""
