"""`draem serve`: an inspection service over a trained run, with a review page and a history in SQLite."""
