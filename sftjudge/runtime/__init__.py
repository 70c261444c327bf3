"""What the hardware allows: device and precision (device.py), out-of-memory recovery (oom.py), progress bars."""
