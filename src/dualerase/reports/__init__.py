"""What a person reads and looks at: sample grids and files, the summary, tables and figures."""
