"""[store] State in one SQLite database (versioned schema, transactions) and the
workspace around it."""
