"""LAN discovery I/O: thin adapters over zeroconf (CONTRACT section 10).

The adverts themselves are pure data in ``shared.discovery``. Everything here
takes its ``AsyncZeroconf`` from the caller, who owns its lifetime, so a test
or a process can run several advertisers and browsers on one instance.
"""
