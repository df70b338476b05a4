"""python -m dualerase <command> [args]: the console scripts, under one name.

The commands are erase-class, sample-grid, fid-bench and fid-reference."""
import sys

from dualerase.cli import main

sys.exit(main())
