"""Pure protocol core of PHS Sync: no network, no database, no files."""
