"""The power-cut simulator of tests/test_power_loss.py: an LD_PRELOAD shim
(powercut.c) that logs every change to a directory's SQLite files, and the
replay (replay.py) that rebuilds what a disk holds after a cut at any moment."""
