"""The protocol core: pure Python, never imports Django, DRF or the Django layer.

Clocks, the wire model, records and rows, watermarks, paging, the requester
engine and the responder, blob transfer and key rules. The public names are
re-exported by :mod:`starkeep_sync`.
"""
