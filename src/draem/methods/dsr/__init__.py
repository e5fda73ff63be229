"""DSR (Zavrtanik, Kristan, Skočaj, ECCV 2022): anomaly detection by dual subspace re-projection."""
