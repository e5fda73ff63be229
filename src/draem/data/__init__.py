"""Reading images and masks, dataset layouts and the built-in demo data."""
