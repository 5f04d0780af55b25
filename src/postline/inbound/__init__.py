"""Mail that comes back: late bounces (DSNs) and complaints (ARF) on the return path."""
