"""RADIUS dictionaries in the FreeRADIUS format that pyrad reads (data only)."""
