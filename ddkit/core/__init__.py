"""What every room stands on: devices and seeds, atomic files, input checks, resume keys, statistics.

Imports no other room of ddkit.
"""
