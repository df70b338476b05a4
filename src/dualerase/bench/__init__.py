"""fid-bench: benchmark specs, their cells, the tuning stage, the tables, the committed records."""
