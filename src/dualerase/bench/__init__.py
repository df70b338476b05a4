"""fid-bench: benchmark specs, their cells, the tuning stage, the tables and the committed records."""
