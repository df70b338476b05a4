"""python -m dualerase <command> [args]: the console scripts erase-class, sample-grid, fid-bench, fid-reference."""
import sys

from dualerase.cli import main

sys.exit(main())
